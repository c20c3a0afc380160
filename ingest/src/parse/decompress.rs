//! Decompression of the request body per `Content-Encoding`, under the size limit.

use std::io::Read;

use super::BodyError;

/// Decompresses the body per `Content-Encoding`, refusing more than `limit` bytes of output.
pub fn decompress(body: &[u8], encoding: Option<&str>, limit: usize) -> Result<Vec<u8>, BodyError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            return Ok(body.to_vec());
        }
        Some("gzip") | Some("x-gzip") => ("gzip", Box::new(flate2::read::MultiGzDecoder::new(body))),
        Some("zstd") => {
            let decoder = zstd::stream::read::Decoder::new(body)
                .map_err(|error| BodyError::Decompress { encoding: "zstd", reason: error.to_string() })?;
            ("zstd", Box::new(decoder))
        }
        Some(other) => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    let mut output = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut output)
        .map_err(|error| BodyError::Decompress { encoding: name, reason: error.to_string() })?;
    if output.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(output)
}
