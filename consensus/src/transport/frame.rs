//! Length-prefixed frames: a big-endian `u32` byte count, then a JSON document.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame accepted. Snapshots travel in one frame, so this bounds them too.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// What a frame's buffer starts with; it grows from there as the data arrives.
const INITIAL_BUFFER_BYTES: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The frame is larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    /// The frame is not the JSON document expected.
    #[error("frame does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Writes `message` as one frame and finishes the stream.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, message: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let length = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    send.write_all(&length.to_be_bytes()).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    send.write_all(&body).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    send.finish().map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(())
}

/// Reads one frame from `recv` (a QUIC stream, or any byte source) and decodes it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(recv: &mut R) -> Result<T, FrameError> {
    let mut length = [0u8; 4];
    recv.read_exact(&mut length).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    // The buffer grows as the data arrives: a peer that announces 64 MiB and sends nothing
    // makes this node allocate nothing.
    let mut body = Vec::with_capacity(length.min(INITIAL_BUFFER_BYTES));
    (&mut *recv).take(length as u64).read_to_end(&mut body).await.map_err(|e| FrameError::Stream(e.to_string()))?;
    if body.len() < length {
        return Err(FrameError::Stream(format!("stream ended after {} of {length} bytes", body.len())));
    }
    Ok(serde_json::from_slice(&body)?)
}
