//! Identifier rules shared by transaction ids, account ids, user ids and idempotency keys:
//! 1–128 characters of `[A-Za-z0-9._:-]`. One definition so that every entry point (body,
//! path, query, header) rejects the same things.

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("may only contain letters, digits and . _ : -")]
    BadCharacter,
}

/// Checks an identifier against the shared charset and length.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        assert_eq!(validate_id("acc-1_x.y:z"), Ok(()));
        assert_eq!(validate_id(&"a".repeat(128)), Ok(()));
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"a".repeat(129)), Err(IdError::TooLong));
        assert_eq!(validate_id("a b"), Err(IdError::BadCharacter));
        assert_eq!(validate_id("é"), Err(IdError::BadCharacter));
        assert_eq!(validate_id("a/b"), Err(IdError::BadCharacter));
    }
}
