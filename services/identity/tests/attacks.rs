//! Forged and misused tokens against the real server: every one is refused with UNAUTHENTICATED and
//! the server keeps serving. Tokens with a valid signature are signed with identity's real active
//! key, read from its database and decrypted with the test KEK (an insider with the key can still
//! not get past `aud`, `iss`, `exp` or `typ`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, Payload},
};
use bank_auth::{ACCESS_TOKEN_TYPE, Claims, MFA_PENDING_TOKEN_TYPE};
use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::identity::v1::GetMyProfileRequest;
use bank_testkit::{TestIdentity, bearer, identity::TEST_KEK};
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

struct ActiveKey {
    kid: String,
    signing: ed25519_dalek::SigningKey,
}

async fn active_key(identity: &TestIdentity) -> ActiveKey {
    let mut conn = identity.db().await;
    let (kid, nonce, sealed): (String, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT kid, private_key_nonce, private_key_sealed FROM signing_keys WHERE state = 'active'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let kek = base64::engine::general_purpose::STANDARD.decode(TEST_KEK).unwrap();
    let cipher = Aes256Gcm::new_from_slice(&kek).unwrap();
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let seed = cipher.decrypt(&Nonce::from(nonce), Payload { msg: &sealed, aad: kid.as_bytes() }).unwrap();
    let seed: [u8; 32] = seed.try_into().unwrap();
    ActiveKey { kid, signing: ed25519_dalek::SigningKey::from_bytes(&seed) }
}

impl ActiveKey {
    fn sign(&self, typ: &str, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        let der = self.signing.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

#[tokio::test]
async fn forged_expired_misaddressed_and_misused_tokens_are_all_refused() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("mallory-target@example.com").await;
    let key = active_key(&identity).await;
    let genuine = claims_of(&user.tokens.access_token);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // Control: a token we sign with the real key and the real claims passes.
    let mut client = identity.client().await;
    client
        .get_my_profile(bearer(GetMyProfileRequest {}, &key.sign(ACCESS_TOKEN_TYPE, &genuine)))
        .await
        .unwrap();

    let public_x = {
        let jwks = client.get_jwks(bank_proto::identity::v1::GetJwksRequest {}).await.unwrap().into_inner();
        jwks.keys.into_iter().find(|k| k.kid == key.kid).unwrap().x
    };
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    hs256.kid = Some(key.kid.clone());
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let stranger_token = {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some("some-other-kid".to_owned());
        let der = stranger.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, &genuine, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    };

    let cases: Vec<(&str, String, ErrorCode)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": key.kid})),
                b64(&serde_json::to_value(&genuine).unwrap())
            ),
            ErrorCode::Unauthenticated,
        ),
        (
            "HS256 keyed with the public key (base64url)",
            jsonwebtoken::encode(&hs256, &genuine, &EncodingKey::from_secret(public_x.as_bytes())).unwrap(),
            ErrorCode::Unauthenticated,
        ),
        (
            "HS256 keyed with the raw public key",
            jsonwebtoken::encode(
                &hs256,
                &genuine,
                &EncodingKey::from_secret(&key.signing.verifying_key().to_bytes()),
            )
            .unwrap(),
            ErrorCode::Unauthenticated,
        ),
        ("unknown kid", stranger_token, ErrorCode::Unauthenticated),
        (
            "wrong audience",
            key.sign(ACCESS_TOKEN_TYPE, &Claims { aud: "another-api".into(), ..genuine.clone() }),
            ErrorCode::Unauthenticated,
        ),
        (
            "wrong issuer",
            key.sign(ACCESS_TOKEN_TYPE, &Claims { iss: "https://evil.example".into(), ..genuine.clone() }),
            ErrorCode::Unauthenticated,
        ),
        (
            "expired",
            key.sign(
                ACCESS_TOKEN_TYPE,
                &Claims { exp: now - 3600, iat: now - 7200, nbf: now - 7200, ..genuine.clone() },
            ),
            ErrorCode::TokenExpired,
        ),
        (
            "MFA-pending token",
            key.sign(
                MFA_PENDING_TOKEN_TYPE,
                &Claims { typ: MFA_PENDING_TOKEN_TYPE.into(), ..genuine.clone() },
            ),
            ErrorCode::Unauthenticated,
        ),
        ("refresh token as access token", user.tokens.refresh_token.clone(), ErrorCode::Unauthenticated),
        ("empty", String::new(), ErrorCode::Unauthenticated),
    ];
    for (name, token, expected) in cases {
        let err = client.get_my_profile(bearer(GetMyProfileRequest {}, &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{name}: {err:?}");
        assert_eq!(reason_of(&err), Some(expected), "{name}");
    }
    // Still serving, and the genuine token still works.
    client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap();
}

/// Item: a direct gRPC caller cannot choose the address identity records: `x-forwarded-for` counts
/// only from a trusted forwarder (`server.trusted_forwarders`, the gateway), and by default from none.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_forwarders() {
    use bank_proto::identity::v1::{ListMySessionsRequest, LoginRequest};

    async fn recorded_ip(identity: &TestIdentity, email: &str) -> String {
        let user = identity.user(email).await;
        let mut client = identity.client().await;
        let mut login = tonic::Request::new(LoginRequest {
            email: user.email.clone(),
            password: bank_testkit::identity::USER_PASSWORD.into(),
            device_name: String::new(),
        });
        login.metadata_mut().insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let tokens = match client.login(login).await.unwrap().into_inner().outcome {
            Some(bank_proto::identity::v1::login_response::Outcome::Tokens(tokens)) => tokens,
            other => panic!("unexpected login outcome: {other:?}"),
        };
        let sessions = client
            .list_my_sessions(bank_testkit::bearer(ListMySessionsRequest::default(), &tokens.access_token))
            .await
            .unwrap()
            .into_inner()
            .sessions;
        let newest = sessions.iter().max_by_key(|s| s.created_at.map(|t| (t.seconds, t.nanos))).unwrap();
        newest.ip_address.clone()
    }

    // The production default: nobody's forwarded address is believed.
    let untrusting = TestIdentity::spawn_with(
        bank_testkit::Options::default().set("server.trusted_forwarders", Vec::<String>::new()),
    )
    .await;
    assert_eq!(recorded_ip(&untrusting, "mallory@example.com").await, "127.0.0.1");
    // A forwarder elsewhere is not this peer either.
    let elsewhere = TestIdentity::spawn_with(
        bank_testkit::Options::default().set("server.trusted_forwarders", vec!["10.0.0.0/8"]),
    )
    .await;
    assert_eq!(recorded_ip(&elsewhere, "mallory@example.com").await, "127.0.0.1");
    // The gateway's network: its header is the client's address.
    let trusting = TestIdentity::spawn_with(
        bank_testkit::Options::default().set("server.trusted_forwarders", vec!["127.0.0.1"]),
    )
    .await;
    assert_eq!(recorded_ip(&trusting, "gary@example.com").await, "6.6.6.6");
}
