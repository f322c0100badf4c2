use serde::Serialize;
use serde::de::DeserializeOwned;

/// The two encodings gitfleet speaks: JSON (the default, for any client) and MessagePack with
/// field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Json,
    MsgPack,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed JSON: {0}")]
    JsonDecode(#[from] serde_json::Error),
    #[error("malformed MessagePack: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    #[error("could not encode MessagePack: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
}

pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own types to JSON cannot fail: they have string keys and no custom
    // serialisers that error.
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

pub fn to_msgpack<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

pub fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

pub fn encode<T: Serialize>(value: &T, encoding: Encoding) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::Json => Ok(to_json(value)),
        Encoding::MsgPack => to_msgpack(value),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<T, CodecError> {
    match encoding {
        Encoding::Json => from_json(bytes),
        Encoding::MsgPack => from_msgpack(bytes),
    }
}
