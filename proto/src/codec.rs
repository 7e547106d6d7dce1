//! The codec of every `chat.v1` service: prost's, with a small encode buffer.
//!
//! tonic gives each response body an encode buffer of `buffer_size` bytes up front and
//! keeps it for the life of the body. For a server stream that is held open for hours
//! with a message now and then, the default 8 KiB is most of what an idle stream costs;
//! our messages are a few hundred bytes, and the buffer still grows for larger ones.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode buffer of a response (or request) body.
pub const ENCODE_BUFFER: usize = 512;
/// tonic's default: encoded bytes buffered before a stream yields to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with an [`ENCODE_BUFFER`]-byte encode buffer.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}
