pub mod email;
pub mod mfa;
pub mod password;
