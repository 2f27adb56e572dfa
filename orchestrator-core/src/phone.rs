//! E.164 phone numbers: parsing and normalisation.
//!
//! The rule is ITU-T Recommendation E.164: a `+`, a country code whose first
//! digit is not 0, and at most 15 digits in all. We accept the separators people
//! type (spaces, `-`, `.`, `(`, `)`) and drop them, so `"+966 50-123 4567"` and
//! `"+966501234567"` are the same number, which is what the one-call-per-number
//! rule needs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fewest digits we accept. E.164 sets no minimum; the shortest numbers in
/// service (a 3-digit country code and a 4-digit subscriber number) have 7.
pub const MIN_DIGITS: usize = 7;
/// Most digits E.164 allows (country code included).
pub const MAX_DIGITS: usize = 15;

/// A normalised E.164 phone number: `+` followed by 7 to 15 digits, the first not 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a string is not an E.164 phone number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneNumberError {
    /// The string is empty or only white space.
    #[error("phone number is empty")]
    Empty,
    /// E.164 numbers are written with a leading `+` and the country code.
    #[error("phone number must start with '+' and the country code (E.164), e.g. +966501234567")]
    MissingPlus,
    /// A character that is neither a digit nor an accepted separator.
    #[error("phone number has an invalid character {character:?} at position {position}")]
    InvalidCharacter {
        /// The character at fault.
        character: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
    /// Country codes never start with 0.
    #[error("phone number country code cannot start with 0")]
    LeadingZero,
    /// Fewer than [`MIN_DIGITS`] digits.
    #[error("phone number has {digits} digits; E.164 numbers have at least {MIN_DIGITS}")]
    TooShort {
        /// Digits found.
        digits: usize,
    },
    /// More than [`MAX_DIGITS`] digits.
    #[error("phone number has {digits} digits; E.164 allows at most {MAX_DIGITS}")]
    TooLong {
        /// Digits found.
        digits: usize,
    },
}

impl PhoneNumber {
    /// Parses and normalises `input`.
    ///
    /// # Errors
    /// A [`PhoneNumberError`] saying precisely what is wrong.
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        let mut chars = trimmed.chars().enumerate();
        match chars.next() {
            Some((_, '+')) => {}
            _ => return Err(PhoneNumberError::MissingPlus),
        }
        let mut normalised = String::with_capacity(MAX_DIGITS + 1);
        normalised.push('+');
        let mut digits = 0usize;
        for (position, character) in chars {
            match character {
                '0'..='9' => {
                    if digits == 0 && character == '0' {
                        return Err(PhoneNumberError::LeadingZero);
                    }
                    digits += 1;
                    if digits <= MAX_DIGITS {
                        normalised.push(character);
                    }
                }
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => {
                    return Err(PhoneNumberError::InvalidCharacter {
                        character,
                        position,
                    })
                }
            }
        }
        if digits < MIN_DIGITS {
            return Err(PhoneNumberError::TooShort { digits });
        }
        if digits > MAX_DIGITS {
            return Err(PhoneNumberError::TooLong { digits });
        }
        Ok(Self(normalised))
    }

    /// The normalised number, e.g. `"+966501234567"`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PhoneNumber {
    type Err = PhoneNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn separators_are_dropped() {
        let number = PhoneNumber::parse(" +966 (50) 123-45.67 ").unwrap();
        assert_eq!(number.as_str(), "+966501234567");
    }

    #[test]
    fn plus_is_required() {
        assert_eq!(
            PhoneNumber::parse("966501234567"),
            Err(PhoneNumberError::MissingPlus)
        );
        assert_eq!(PhoneNumber::parse("   "), Err(PhoneNumberError::Empty));
    }

    #[test]
    fn letters_are_rejected_with_their_position() {
        assert_eq!(
            PhoneNumber::parse("+96650x234567"),
            Err(PhoneNumberError::InvalidCharacter {
                character: 'x',
                position: 6
            })
        );
    }

    #[test]
    fn country_code_cannot_start_with_zero() {
        assert_eq!(
            PhoneNumber::parse("+0966501234567"),
            Err(PhoneNumberError::LeadingZero)
        );
    }

    #[test]
    fn length_limits_follow_e164() {
        assert_eq!(
            PhoneNumber::parse("+123456"),
            Err(PhoneNumberError::TooShort { digits: 6 })
        );
        assert!(PhoneNumber::parse("+1234567").is_ok());
        assert!(PhoneNumber::parse("+123456789012345").is_ok());
        assert_eq!(
            PhoneNumber::parse("+1234567890123456"),
            Err(PhoneNumberError::TooLong { digits: 16 })
        );
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let number: PhoneNumber = serde_json::from_str("\"+1 415 555 0100\"").unwrap();
        assert_eq!(serde_json::to_string(&number).unwrap(), "\"+14155550100\"");
        assert!(serde_json::from_str::<PhoneNumber>("\"hello\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_output_is_canonical(input in "\\PC{0,24}") {
            if let Ok(number) = PhoneNumber::parse(&input) {
                let reparsed = PhoneNumber::parse(number.as_str()).unwrap();
                prop_assert_eq!(&reparsed, &number);
                prop_assert!(number.as_str().len() <= MAX_DIGITS + 1);
            }
        }

        #[test]
        fn any_valid_digit_string_parses(digits in "[1-9][0-9]{6,14}") {
            let number = PhoneNumber::parse(&format!("+{digits}")).unwrap();
            prop_assert_eq!(number.as_str(), format!("+{digits}"));
        }
    }
}
