//! Where a message goes and how it is marked, without a broker client: librdkafka's default
//! partitioner (CRC-32 of the key), the batch content type and the origin header (re-exported by
//! `kafka`; here so that the `client` crate has them without linking librdkafka).

/// Content type of a message on the events topic that holds several events: a JSON array of
/// CloudEvents (the CloudEvents "batched" JSON format), all of one partition. A message without
/// it may still be one event object: consumers read both.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Header naming the ingest instance that produced a batch (its own events tail skips them).
pub const ORIGIN_HEADER: &str = "metering-origin";

/// The partition librdkafka's default partitioner picks for a keyed message: CRC-32 of the key
/// modulo the partition count. The ingest groups a request's events by it, so a batch message
/// holds events of one partition and every customer's events stay on the partition its key
/// names, whoever produced them.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    partition_of_parts(&[key], partitions)
}

/// The events-topic partition of a customer's key `tenant/customer` (see [`partition_for`]).
pub fn customer_partition(tenant: &str, customer: &str, partitions: i32) -> i32 {
    partition_of_parts(&[tenant.as_bytes(), b"/", customer.as_bytes()], partitions)
}

/// [`partition_for`] of the key made of `parts` (`tenant`, `/`, `customer`) without building it.
pub fn partition_of_parts(parts: &[&[u8]], partitions: i32) -> i32 {
    let mut crc = !0u32;
    for part in parts {
        crc = crc32_update(crc, part);
    }
    (!crc % partitions.max(1) as u32) as i32
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and librdkafka compute it).
pub fn crc32(bytes: &[u8]) -> u32 {
    !crc32_update(!0u32, bytes)
}

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert!((0..6).contains(&partition_for(b"acme/cust_1", 6)));
        assert_eq!(
            partition_of_parts(&[b"acme", b"/", b"cust_1"], 7),
            partition_for(b"acme/cust_1", 7)
        );
    }
}
