-- Every CloudEvents attribute of a raw event survives (issue 27): the media type and schema of its
-- `data`, its `time` with full precision (RFC 3339 in UTC; the `time` column keeps whole seconds) and
-- its extension attributes as one JSON object (`{"region":"eu","priority":3}`; query them with
-- visitParamExtractString(extensions, 'region') or visitParamExtractRaw). Rows written before this
-- migration have '' and '{}'.
ALTER TABLE events_raw ADD COLUMN datacontenttype String DEFAULT '';
ALTER TABLE events_raw ADD COLUMN dataschema String DEFAULT '';
ALTER TABLE events_raw ADD COLUMN time_rfc3339 String DEFAULT '';
ALTER TABLE events_raw ADD COLUMN extensions String DEFAULT '{}';
