//! The fast path of event decoding: a typed, borrowed parse that accepts only what [`validate`] accepts.
//!
//! [`validate`] reads an event into a [`serde_json::Value`] tree, which allocates for every key and
//! string and then clones `data`. Almost every event is valid and plain, so [`Wire::parse`] reads
//! the fields straight into borrowed `&str`s and keeps `data` as its JSON text, and [`Wire::check`]
//! applies the same rules with the same helpers. Both return `None` for anything they do not accept
//! as is (a string with escapes, a duplicate field, a wrong type, an invalid value): the caller then
//! runs [`validate`], which decides and explains. So the fast path never accepts an event the slow
//! path would refuse, and never refuses one: it only falls back (tested below on a corpus of both).
//!
//! [`validate`]: crate::event::validate

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::event::attributes::{MAX_EXTENSIONS, MAX_URI_LEN, is_attribute_name, uri_problem};
use crate::event::{
    Checker, Conformance, Intake, MAX_DATA_BYTES, MAX_ID_LEN, Measure, MediaType, Window,
    event_time, measure, string_problem,
};
use crate::token::is_token;

/// One event as it is on the wire, borrowed from the payload.
#[derive(Debug)]
pub struct Wire<'a> {
    /// Present (even as `null`) or absent: `null` is not a valid spec version.
    specversion: Option<&'a RawValue>,
    id: &'a str,
    source: Option<&'a str>,
    meter: &'a str,
    customer: &'a str,
    time: Option<&'a str>,
    data: Option<&'a RawValue>,
    tenant: Option<&'a str>,
    receivedat: Option<&'a str>,
    datacontenttype: Option<&'a str>,
    dataschema: Option<&'a str>,
    /// Every other member (extension attributes, `data_base64`) as its JSON text, in order.
    others: Vec<(&'a str, &'a RawValue)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Wire<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor(std::marker::PhantomData))
    }
}

/// Reads an event object as `#[derive(Deserialize)]` would (borrowed strings, `null` for an
/// optional member is absent, a repeated member is an error), keeping the other members.
struct WireVisitor<'a>(std::marker::PhantomData<&'a ()>);

/// Sets a member read once; a second occurrence is an error (as derived structs have it).
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de: 'a, 'a> Visitor<'de> for WireVisitor<'a> {
    type Value = Wire<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'a>, A::Error> {
        let (mut specversion, mut id, mut source, mut meter, mut customer) =
            (None, None, None, None, None);
        let (mut time, mut data, mut tenant, mut receivedat) = (None, None, None, None);
        let (mut datacontenttype, mut dataschema) = (None, None);
        let mut others = Vec::new();
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "specversion" => once(
                    &mut specversion,
                    map.next_value::<&RawValue>()?,
                    "specversion",
                )?,
                "id" => once(&mut id, map.next_value::<&str>()?, "id")?,
                "source" => once(&mut source, map.next_value::<Option<&str>>()?, "source")?,
                "type" => once(&mut meter, map.next_value::<&str>()?, "type")?,
                "subject" => once(&mut customer, map.next_value::<&str>()?, "subject")?,
                "time" => once(&mut time, map.next_value::<Option<&str>>()?, "time")?,
                "data" => once(&mut data, map.next_value::<Option<&RawValue>>()?, "data")?,
                "tenant" => once(&mut tenant, map.next_value::<Option<&str>>()?, "tenant")?,
                "receivedat" => once(
                    &mut receivedat,
                    map.next_value::<Option<&str>>()?,
                    "receivedat",
                )?,
                "datacontenttype" => once(
                    &mut datacontenttype,
                    map.next_value::<Option<&str>>()?,
                    "datacontenttype",
                )?,
                "dataschema" => once(
                    &mut dataschema,
                    map.next_value::<Option<&str>>()?,
                    "dataschema",
                )?,
                other => others.push((other, map.next_value::<&RawValue>()?)),
            }
        }
        Ok(Wire {
            specversion,
            id: id.ok_or_else(|| de::Error::missing_field("id"))?,
            source: source.flatten(),
            meter: meter.ok_or_else(|| de::Error::missing_field("type"))?,
            customer: customer.ok_or_else(|| de::Error::missing_field("subject"))?,
            time: time.flatten(),
            data: data.flatten(),
            tenant: tenant.flatten(),
            receivedat: receivedat.flatten(),
            datacontenttype: datacontenttype.flatten(),
            dataschema: dataschema.flatten(),
            others,
        })
    }
}

/// An event the fast path accepted: the normalized fields, borrowed, and what its meter makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<'a> {
    /// Tenant (of the intake).
    pub tenant: &'a str,
    /// Arrival time (of the intake).
    pub receivedat: OffsetDateTime,
    /// Event id.
    pub id: &'a str,
    /// Producer (`api` when absent).
    pub source: &'a str,
    /// Meter key (`type`).
    pub meter: &'a str,
    /// Customer (`subject`).
    pub customer: &'a str,
    /// Event time, UTC (the arrival time when absent).
    pub time: OffsetDateTime,
    /// `data` as its JSON text (`{}` when absent).
    pub data: &'a str,
    /// Quantity, dimension and distinct value.
    pub measure: Measure,
    /// Media type of `data`, if given.
    pub datacontenttype: Option<&'a str>,
    /// Schema URI of `data`, if given.
    pub dataschema: Option<&'a str>,
    /// Extension attributes (name, JSON text), by name; `null`s left out.
    pub extensions: Vec<(&'a str, &'a str)>,
}

impl<'a> Wire<'a> {
    /// Reads one event, or `None` when it is not plain enough for the fast path.
    pub fn parse(json: &'a str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// Reads a batch message (a JSON array of events) in one pass, or `None` when it is not an
    /// array or any element is not plain enough for [`Self::parse`]: the caller then splits the
    /// array and reads its elements one by one. An element is accepted here exactly when
    /// [`Self::parse`] accepts its text.
    pub fn parse_batch(json: &'a [u8]) -> Option<Vec<Self>> {
        let mut wires = Vec::new();
        Self::each_in_batch(json, |wire| {
            wires.push(wire);
            true
        })?;
        Some(wires)
    }

    /// Reads a batch message in one pass like [`Self::parse_batch`], handing each element to `each`
    /// in order instead of collecting them (a batch of 1,000 events made a vector of 140 KiB,
    /// grown by doubling, per message). `None` as [`Self::parse_batch`] gives it, or when `each`
    /// returns false; the elements before that were handed over already. The message's UTF-8 is
    /// checked once and its events read as text: read from bytes, serde_json checks each string on
    /// its own, 6% of the aggregator's time, where one check of the whole message costs a fraction
    /// of that.
    pub fn each_in_batch(json: &'a [u8], each: impl FnMut(Self) -> bool) -> Option<()> {
        /// Hands each element of a sequence over as it is read.
        struct Each<F>(F);
        impl<'de, F: FnMut(Wire<'de>) -> bool> Visitor<'de> for Each<F> {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<bool, A::Error> {
                while let Some(wire) = seq.next_element::<Wire<'de>>()? {
                    if !(self.0)(wire) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
        let mut de = serde_json::Deserializer::from_str(std::str::from_utf8(json).ok()?);
        let all = de::Deserializer::deserialize_seq(&mut de, Each(each)).ok()?;
        de.end().ok()?;
        all.then_some(())
    }

    /// The event's own `receivedat` (when the ingest accepted it), if present and RFC 3339.
    pub fn received_at(&self) -> Option<OffsetDateTime> {
        let s = self.receivedat?;
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    }

    /// The event as an ingest produced it, checked against its own `tenant` (a valid token) and
    /// the arrival time `received_at`: the reading of the events topic (aggregator, ingest tail).
    pub fn check_produced(
        &self,
        received_at: OffsetDateTime,
        window: Window,
        catalog: &Catalog,
    ) -> Option<Checked<'a>> {
        let tenant = self.tenant.filter(|t| is_token(t, 64))?;
        let intake = Intake {
            tenant,
            customer_scope: None,
            received_at,
            window,
        };
        self.check(&intake, catalog)
    }

    /// The event normalized as [`crate::event::validate`] would, or `None` (then run that).
    pub fn check<'s>(&self, intake: &Intake<'s>, catalog: &Catalog) -> Option<Checked<'s>>
    where
        'a: 's,
    {
        self.check_with(intake, catalog, Conformance::Lenient)
    }

    /// The event normalized as [`crate::event::validate_with`] would with `conformance`, or
    /// `None` (then run that).
    pub fn check_with<'s>(
        &self,
        intake: &Intake<'s>,
        catalog: &Catalog,
        conformance: Conformance,
    ) -> Option<Checked<'s>>
    where
        'a: 's,
    {
        if self.specversion.is_some_and(|v| v.get() != "\"1.0\"") {
            return None;
        }
        if conformance == Conformance::Strict
            && (self.specversion.is_none() || self.source.is_none())
        {
            return None;
        }
        let source = self.source.unwrap_or("api");
        for (field, value) in [
            ("id", self.id),
            ("source", source),
            ("subject", self.customer),
            ("type", self.meter),
        ] {
            if string_problem(field, value).is_some() {
                return None;
            }
        }
        let meter = catalog.meter(self.meter)?;
        if self.tenant.is_some_and(|t| t != intake.tenant)
            || intake.customer_scope.is_some_and(|c| c != self.customer)
        {
            return None;
        }
        let time = match self.time {
            None => intake.received_at,
            Some(s) => event_time(s, intake).ok()?,
        };
        let data = self.data.map_or("{}", RawValue::get);
        if !data.starts_with('{') || data.len() > MAX_DATA_BYTES {
            return None;
        }
        let wanted = [
            meter.dimension.as_deref(),
            meter.value_property.as_deref(),
            meter.unique_property.as_deref(),
        ];
        let fields = Picked(wanted)
            .deserialize(&mut serde_json::Deserializer::from_str(data))
            .ok()?;
        let mut checker = Checker {
            index: 0,
            errors: Vec::new(),
        };
        let measure = measure(&mut checker, meter, &fields)?;
        if let Some(t) = self.datacontenttype {
            let media = MediaType::parse(t)?;
            if t.len() > MAX_URI_LEN || (self.data.is_some() && !media.is_json()) {
                return None;
            }
        }
        if self
            .dataschema
            .is_some_and(|s| uri_problem("dataschema", s).is_some())
        {
            return None;
        }
        let extensions = plain_extensions(&self.others)?;
        Some(Checked {
            tenant: intake.tenant,
            receivedat: intake.received_at,
            id: self.id,
            source,
            meter: self.meter,
            customer: self.customer,
            time,
            data,
            measure,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            extensions,
        })
    }
}

/// The extension attributes among `others` when every one is plain (a valid name; a string
/// without escapes or control characters, a canonical integer of 32 bits, a boolean; `null` is
/// left out), sorted by name; `None` otherwise (`data_base64` included), for the full validation.
fn plain_extensions<'a>(others: &[(&'a str, &'a RawValue)]) -> Option<Vec<(&'a str, &'a str)>> {
    let mut out = Vec::with_capacity(others.len());
    for &(name, raw) in others {
        if !is_attribute_name(name) {
            return None;
        }
        let text = raw.get();
        let plain = match text.as_bytes().first()? {
            b'n' => continue,
            b't' | b'f' => true,
            b'"' => {
                let inner = &text[1..text.len() - 1];
                !inner.contains('\\')
                    && inner.len() <= MAX_ID_LEN
                    && !inner.chars().any(char::is_control)
            }
            _ => text.parse::<i32>().is_ok_and(|n| n.to_string() == text),
        };
        if !plain {
            return None;
        }
        out.push((name, text));
    }
    out.sort_unstable_by_key(|&(name, _)| name);
    let repeated = out.windows(2).any(|w| w[0].0 == w[1].0);
    (!repeated && out.len() <= MAX_EXTENSIONS).then_some(out)
}

impl Checked<'_> {
    /// Appends the event as the events topic carries it: the JSON of the [`crate::UsageEvent`]
    /// that [`crate::event::validate`] makes of it, field for field, with `data` as received.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .map_err(serde::ser::Error::custom)
        };
        let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s);
        out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
        string(out, self.id)?;
        out.extend_from_slice(br#","source":"#);
        string(out, self.source)?;
        out.extend_from_slice(br#","type":"#);
        string(out, self.meter)?;
        out.extend_from_slice(br#","subject":"#);
        string(out, self.customer)?;
        out.extend_from_slice(br#","time":"#);
        string(out, &rfc3339(self.time)?)?;
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(self.data.as_bytes());
        if let Some(t) = self.datacontenttype {
            out.extend_from_slice(br#","datacontenttype":"#);
            string(out, t)?;
        }
        if let Some(s) = self.dataschema {
            out.extend_from_slice(br#","dataschema":"#);
            string(out, s)?;
        }
        for (name, raw) in &self.extensions {
            out.push(b',');
            string(out, name)?;
            out.push(b':');
            out.extend_from_slice(raw.as_bytes());
        }
        out.extend_from_slice(br#","tenant":"#);
        string(out, self.tenant)?;
        out.extend_from_slice(br#","receivedat":"#);
        string(out, &rfc3339(self.receivedat)?)?;
        out.push(b'}');
        Ok(())
    }
}

impl Checked<'_> {
    /// The extension attributes as one JSON object (`{}` when none), as
    /// [`crate::event::Attributes::extensions_json`] writes them.
    pub fn extensions_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, raw)) in self.extensions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(raw);
        }
        out.push('}');
        out
    }
}

/// Reads a `data` object keeping only the named properties (parsed), skipping the rest unparsed.
/// A repeated key keeps its last value, as a [`Map`] does.
struct Picked<'n>([Option<&'n str>; 3]);

impl<'de> DeserializeSeed<'de> for Picked<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Picked<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut picked = Map::new();
        while let Some(key) = map.next_key::<&'de str>()? {
            if self.0.contains(&Some(key)) {
                picked.insert(key.to_owned(), map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests;
