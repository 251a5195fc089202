//! Second factors, as pure rules: RFC 6238 TOTP (30 s steps, 6 digits, HMAC-SHA1 — what
//! authenticator apps expect), the `otpauth://` URI and its QR code, and single-use recovery codes.
//! The caller supplies the time and the stored state, so every rule is testable with any clock.

use hmac::{Hmac, Mac as _};
use rand::{Rng as _, RngCore as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Seconds per time step.
pub const STEP_SECONDS: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a generated secret (160 bits, RFC 4226's recommendation for HMAC-SHA1).
pub const SECRET_BYTES: usize = 20;
/// Steps of clock skew accepted either way.
pub const SKEW_STEPS: i64 = 1;
/// Recovery codes issued at once.
pub const RECOVERY_CODES: usize = 10;

/// The HMAC of a TOTP. Enrolment always uses SHA-1; the others exist for RFC 6238's test vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA1.
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

fn mac(algorithm: Algorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    match algorithm {
        Algorithm::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(key)
            .map(|m| m.chain_update(message).finalize().into_bytes().to_vec())
            .unwrap_or_default(),
        Algorithm::Sha256 => Hmac::<Sha256>::new_from_slice(key)
            .map(|m| m.chain_update(message).finalize().into_bytes().to_vec())
            .unwrap_or_default(),
        Algorithm::Sha512 => Hmac::<sha2::Sha512>::new_from_slice(key)
            .map(|m| m.chain_update(message).finalize().into_bytes().to_vec())
            .unwrap_or_default(),
    }
}

/// RFC 4226 HOTP with dynamic truncation, as a zero-padded decimal string of `digits` digits.
#[must_use]
pub fn hotp(algorithm: Algorithm, key: &[u8], counter: u64, digits: u32) -> String {
    let hash = mac(algorithm, key, &counter.to_be_bytes());
    let offset = usize::from(hash.last().copied().unwrap_or_default() & 0x0f);
    let binary =
        hash.get(offset..offset + 4).map_or(0, |b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]));
    let modulus = 10u32.pow(digits.min(9));
    format!("{:0width$}", binary % modulus, width = digits as usize)
}

/// The time step of a unix time.
#[must_use]
pub fn step_of(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECONDS)
}

/// The code of step `step`.
#[must_use]
pub fn code_for_step(algorithm: Algorithm, key: &[u8], step: i64, digits: u32) -> String {
    hotp(algorithm, key, u64::try_from(step).unwrap_or_default(), digits)
}

/// The 6-digit SHA-1 code valid at `unix` (what an authenticator app shows).
#[must_use]
pub fn code_at(key: &[u8], unix: i64) -> String {
    code_for_step(Algorithm::Sha1, key, step_of(unix), DIGITS)
}

/// Whether `code` has the shape of a TOTP code (6 ASCII digits; spaces are ignored).
#[must_use]
pub fn normalize_code(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == DIGITS as usize && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The step `code` is valid for at `unix`: one of the steps within [`SKEW_STEPS`] of now and
/// strictly newer than `last_used_step` (so each code, and every older one, is accepted once).
/// Every candidate is compared in constant time.
#[must_use]
pub fn verify(key: &[u8], code: &str, unix: i64, last_used_step: i64) -> Option<i64> {
    let code = normalize_code(code)?;
    let now = step_of(unix);
    let mut matched = None;
    for step in (now - SKEW_STEPS)..=(now + SKEW_STEPS) {
        let expected = code_for_step(Algorithm::Sha1, key, step, DIGITS);
        let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        if equal && step > last_used_step && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// A new random TOTP secret.
#[must_use]
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (how authenticator apps take secrets).
#[must_use]
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes RFC 4648 base32 (padding, spaces and case ignored).
#[must_use]
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let value = BASE32.iter().position(|b| char::from(*b) == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | u32::try_from(value).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `otpauth://totp/` URI authenticator apps scan (Key Uri Format): label `issuer:account`.
#[must_use]
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        percent_encode(account),
        base32(secret),
    )
}

/// The QR code could not be made.
#[derive(Debug, thiserror::Error)]
#[error("qr code: {0}")]
pub struct QrError(String);

/// `text` as a QR code in a grayscale PNG: 8 pixels per module, a 4-module quiet zone.
///
/// # Errors
/// The text does not fit a QR code, or PNG encoding failed.
pub fn qr_png(text: &str) -> Result<Vec<u8>, QrError> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| QrError(e.to_string()))?;
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (index % width + QUIET, index / width + QUIET);
            for dy in 0..SCALE {
                let row = (y * SCALE + dy) * side;
                pixels[row + x * SCALE..row + (x + 1) * SCALE].fill(0);
            }
        }
    }
    let side32 = u32::try_from(side).map_err(|e| QrError(e.to_string()))?;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| QrError(e.to_string()))?;
    writer.write_image_data(&pixels).map_err(|e| QrError(e.to_string()))?;
    writer.finish().map_err(|e| QrError(e.to_string()))?;
    Ok(png)
}

/// Recovery-code alphabet: Crockford's base32 (no i, l, o, u).
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new recovery code: 16 characters (80 random bits) as `xxxx-xxxx-xxxx-xxxx`.
#[must_use]
pub fn new_recovery_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let chars: Vec<char> =
        (0..16).map(|_| char::from(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())])).collect();
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

/// A recovery code as typed -> its canonical form (lower case, no separators, Crockford's
/// look-alikes mapped), or `None` when it cannot be one.
#[must_use]
pub fn normalize_recovery_code(code: &str) -> Option<String> {
    let mut out = String::with_capacity(16);
    for c in code.chars().filter(|c| !c.is_whitespace() && *c != '-') {
        let c = match c.to_ascii_lowercase() {
            'i' | 'l' => '1',
            'o' => '0',
            other => other,
        };
        if !RECOVERY_ALPHABET.contains(&u8::try_from(c).ok()?) {
            return None;
        }
        out.push(c);
    }
    (out.len() == 16).then_some(out)
}

/// What is stored of a recovery code: SHA-256 of its canonical form. 80 random bits make a fast
/// hash safe here (nothing to guess offline), and the lookup stays one indexed row.
#[must_use]
pub fn recovery_code_digest(canonical: &str) -> Vec<u8> {
    Sha256::digest(canonical.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238, appendix B: the seeds are the ASCII digits repeated to the hash's length.
    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc_6238_test_vectors() {
        let vectors: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        for (time, sha1, sha256, sha512) in vectors {
            let step = step_of(time);
            assert_eq!(code_for_step(Algorithm::Sha1, SEED_SHA1, step, 8), sha1, "sha1 at {time}");
            assert_eq!(code_for_step(Algorithm::Sha256, SEED_SHA256, step, 8), sha256, "sha256 at {time}");
            assert_eq!(code_for_step(Algorithm::Sha512, SEED_SHA512, step, 8), sha512, "sha512 at {time}");
        }
    }

    #[test]
    fn rfc_4226_hotp_vectors() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
            "520489",
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(Algorithm::Sha1, SEED_SHA1, counter as u64, 6), *code);
        }
    }

    #[test]
    fn one_step_of_skew_either_way_is_accepted_two_are_not() {
        let key = new_secret();
        let now = 1_700_000_015;
        let step = step_of(now);
        for (offset, accepted) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = code_for_step(Algorithm::Sha1, &key, step + offset, DIGITS);
            assert_eq!(verify(&key, &code, now, 0), accepted.then_some(step + offset), "offset {offset}");
        }
        // The same, seen from a clock that runs 30 s behind or ahead of the app's.
        let code = code_at(&key, now);
        assert_eq!(verify(&key, &code, now - STEP_SECONDS, 0), Some(step));
        assert_eq!(verify(&key, &code, now + STEP_SECONDS, 0), Some(step));
        assert_eq!(verify(&key, &code, now + 2 * STEP_SECONDS, 0), None);
        assert_eq!(verify(&key, &code, now - 2 * STEP_SECONDS, 0), None);
    }

    #[test]
    fn a_used_step_and_every_older_one_are_refused() {
        let key = new_secret();
        let now = 1_700_000_000;
        let code = code_at(&key, now);
        let step = verify(&key, &code, now, 0).unwrap();
        assert_eq!(verify(&key, &code, now, step), None, "the same code twice");
        let older = code_for_step(Algorithm::Sha1, &key, step - 1, DIGITS);
        assert_eq!(verify(&key, &older, now, step), None, "an older code after a newer one");
        let newer = code_for_step(Algorithm::Sha1, &key, step + 1, DIGITS);
        assert_eq!(verify(&key, &newer, now, step), Some(step + 1));
    }

    #[test]
    fn codes_have_a_shape() {
        assert_eq!(normalize_code(" 123 456 "), Some("123456".into()));
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(normalize_code(bad), None, "{bad}");
            assert_eq!(verify(b"key", bad, 0, 0), None);
        }
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        let secret = new_secret();
        assert_eq!(base32(&secret).len(), 32);
        assert_eq!(base32_decode(&base32(&secret)).unwrap(), secret);
        assert_eq!(base32_decode("not base32!"), None);
    }

    #[test]
    fn the_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("bank mesh", "a+b@example.com", b"foobar");
        assert_eq!(
            uri,
            "otpauth://totp/bank%20mesh:a%2Bb@example.com?secret=MZXW6YTBOI&issuer=bank%20mesh&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn the_qr_code_is_a_png() {
        let png = qr_png(&otpauth_uri("bankmesh", "alice@example.com", &new_secret())).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert!(info.width >= (21 + 8) * 8);
    }

    #[test]
    fn recovery_codes_are_random_and_forgiving_to_type() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 19);
        assert_ne!(code, new_recovery_code());
        let canonical = normalize_recovery_code(&code).unwrap();
        assert_eq!(normalize_recovery_code(&code.to_uppercase().replace('-', " ")).unwrap(), canonical);
        assert_eq!(
            normalize_recovery_code("0ab1-cdef-ghjk-mnpq"),
            normalize_recovery_code("OAbI-cdef-ghjk-mnpq")
        );
        assert_eq!(normalize_recovery_code("short"), None);
        assert_eq!(normalize_recovery_code("uuuu-uuuu-uuuu-uuuu"), None);
        assert_eq!(recovery_code_digest(&canonical).len(), 32);
    }
}
