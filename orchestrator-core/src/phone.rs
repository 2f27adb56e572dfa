//! Phone numbers in canonical E.164 form, checked against the numbering plans.
//!
//! Parsing and validation are libphonenumber's (through the `phonenumber`
//! crate, which carries Google's numbering-plan metadata): the country
//! calling code must be in use, and the national number must be one its
//! numbering plan allows (valid length and prefixes). The canonical form is
//! E.164, `+` then country code then national significant number, so every
//! spelling of one number is the same value: `+44 (0) 20 7183 8750`,
//! `+44-20-7183-8750` and `+442071838750` are all `+442071838750`. That is
//! what the one-call-per-number rule compares.
//!
//! Input is international only: it starts with `+` and the country code (we
//! have no default region to read a national number in). Between digits,
//! the separators people type are accepted: spaces, `-`, `.`, `(` and `)`;
//! a national trunk prefix such as the `(0)` in `+44 (0) 20 ...` is dropped.

use std::fmt;
use std::sync::LazyLock;

use phonenumber::metadata::Database;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate::Invalid;

/// Longest input accepted, in characters, separators included. The longest
/// E.164 number has 15 digits; this leaves room for generous formatting and
/// bounds the work a hostile input can cause.
pub const MAX_INPUT_CHARS: usize = 40;

/// Most digits an E.164 number has, country code included.
pub const MAX_DIGITS: usize = 15;

/// Regular expressions libphonenumber keeps compiled. The crate compiles its
/// patterns lazily into one shared least-recently-used cache of 100 entries,
/// fewer than numbers from a few dozen countries use in turn, and a miss
/// recompiles a pattern: measured in an optimised build, parsing numbers of
/// every region in turn cost about 2.5 ms a number with 100 entries, and
/// 25 µs once every pattern had been compiled, which takes about 1,200 entries
/// and 110 MB. Each country actually seen costs about half a megabyte.
const REGEX_CACHE_CAPACITY: usize = 2048;

/// The numbering-plan metadata, with its pattern cache sized as above.
/// Loading it takes about 0.2 s (optimised build) on first use; see [`preload`].
static NUMBERING_PLANS: LazyLock<&'static Database> = LazyLock::new(|| {
    let database: &'static Database = &phonenumber::metadata::DATABASE;
    let cache = database.cache();
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    cache.set_capacity(REGEX_CACHE_CAPACITY);
    database
});

/// Loads the numbering plans now rather than on the first parse, so the
/// first request does not wait for them (about 0.2 s in an optimised build).
pub fn preload() {
    LazyLock::force(&NUMBERING_PLANS);
}

/// A phone number in canonical E.164 form that a numbering plan allows,
/// e.g. `+966501234567`: `+`, the country code, the national significant
/// number; at most [`MAX_DIGITS`] digits. Serialises as that string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a string is not a phone number we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneNumberError {
    /// The string is empty or only white space.
    #[error("phone number is empty")]
    Empty,
    /// Longer than [`MAX_INPUT_CHARS`] characters.
    #[error("phone number is {chars} characters long; at most {MAX_INPUT_CHARS} are accepted")]
    TooManyCharacters {
        /// Characters in the input (surrounding white space excluded).
        chars: usize,
    },
    /// International numbers are written with a leading `+` and the country code.
    #[error("phone number must start with '+' and the country code (E.164), e.g. +966501234567")]
    MissingPlus,
    /// A character that is neither a digit nor an accepted separator.
    #[error("phone number has an invalid character {character:?} at position {position}")]
    InvalidCharacter {
        /// The character at fault.
        character: char,
        /// Its position, counted in characters from 0 (after trimming).
        position: usize,
    },
    /// No country uses this country calling code, e.g. `+999`.
    #[error("phone number does not start with a country calling code in use")]
    UnknownCountryCode,
    /// Too few digits to be a number of any country.
    #[error("phone number has too few digits to be a phone number")]
    TooShort,
    /// Too many digits to be a number of any country.
    #[error("phone number has too many digits to be a phone number")]
    TooLong,
    /// The national number's length is not one the country's numbering plan has.
    #[error(
        "phone number has {digits} digits after +{country_code} ({}), where numbers have {}",
        region_text(.region),
        lengths_text(.possible_lengths)
    )]
    InvalidLength {
        /// The country calling code, e.g. 44.
        country_code: u16,
        /// The region: ISO 3166 code (`"GB"`), or `"001"` for non-geographic codes.
        region: String,
        /// Digits of the national significant number given.
        digits: usize,
        /// Lengths of national significant numbers the plan has, ascending.
        possible_lengths: Vec<u16>,
    },
    /// Of a valid length, but in no range the numbering plan assigns.
    #[error("phone number is not in the numbering plan of +{country_code} ({})", region_text(.region))]
    NotInNumberingPlan {
        /// The country calling code, e.g. 44.
        country_code: u16,
        /// The region: ISO 3166 code (`"GB"`), or `"001"` for non-geographic codes.
        region: String,
    },
    /// Not the canonical form [`PhoneNumber::from_canonical`] requires.
    #[error("stored phone number {0:?} is not in canonical E.164 form")]
    NotCanonical(String),
}

/// `[7, 9, 10]` as "7, 9 or 10"; runs of three or more as "4 to 15".
fn lengths_text(lengths: &[u16]) -> String {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &length in lengths {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == length => *end = length,
            _ => runs.push((length, length)),
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for (start, end) in runs {
        match end - start {
            0 => parts.push(start.to_string()),
            1 => parts.extend([start.to_string(), end.to_string()]),
            _ => parts.push(format!("{start} to {end}")),
        }
    }
    match parts.split_last() {
        None => "no fixed length".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, init)) => format!("{} or {last}", init.join(", ")),
    }
}

/// A region for messages: `"GB"`, or "non-geographic" for `"001"`.
fn region_text(region: &str) -> &str {
    if region == "001" {
        "non-geographic"
    } else {
        region
    }
}

impl From<PhoneNumberError> for Invalid {
    /// An [`Invalid`] naming `to`, the wire field of the callee.
    fn from(error: PhoneNumberError) -> Self {
        Invalid::new(PhoneNumber::FIELD, error.to_string())
    }
}

impl PhoneNumber {
    /// The wire name of the callee field.
    pub const FIELD: &'static str = "to";

    /// Parses an international number in any usual spelling and returns its
    /// canonical E.164 form, when a numbering plan allows it.
    ///
    /// # Errors
    /// A [`PhoneNumberError`] saying what is wrong: the form of the input
    /// (empty, no `+`, an invalid character, too long), an unknown country
    /// code, or a number the country's plan does not allow (its length, or
    /// its prefix).
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        let trimmed = input.trim();
        check_form(trimmed)?;
        let plans: &Database = &NUMBERING_PLANS;
        let number =
            phonenumber::parse_with(plans, None, trimmed).map_err(|error| match error {
                phonenumber::ParseError::InvalidCountryCode => PhoneNumberError::UnknownCountryCode,
                phonenumber::ParseError::NoNumber
                | phonenumber::ParseError::TooShortAfterIdd
                | phonenumber::ParseError::TooShortNsn => PhoneNumberError::TooShort,
                // More digits than fit the parser's integer are too many, too.
                phonenumber::ParseError::TooLong | phonenumber::ParseError::MalformedInteger(_) => {
                    PhoneNumberError::TooLong
                }
            })?;
        let country_code = number.code().value();
        let national = national_number(plans, &number, trimmed)
            .ok_or_else(|| not_in_plan(plans, country_code, &number.national().to_string()))?;
        let canonical = format!("+{country_code}{national}");
        // libphonenumber's plans never exceed E.164's length; checked, not assumed.
        if canonical.len() > MAX_DIGITS + 1 {
            return Err(PhoneNumberError::TooLong);
        }
        Ok(Self(canonical))
    }

    /// A number in canonical form as this type wrote it earlier (a store
    /// reading its rows), without consulting the numbering plans: plans
    /// change, and a call accepted under an older plan must stay readable.
    /// Only the form is checked: `+`, a first digit other than 0, and 7 to
    /// [`MAX_DIGITS`] digits in all. Input from clients goes through
    /// [`PhoneNumber::parse`].
    ///
    /// # Errors
    /// [`PhoneNumberError::NotCanonical`].
    pub fn from_canonical(stored: &str) -> Result<Self, PhoneNumberError> {
        let digits = stored.strip_prefix('+').unwrap_or("");
        let canonical = (7..=MAX_DIGITS).contains(&digits.len())
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && !digits.starts_with('0');
        if canonical {
            Ok(Self(stored.to_owned()))
        } else {
            Err(PhoneNumberError::NotCanonical(stored.to_owned()))
        }
    }

    /// The canonical E.164 form, e.g. `"+966501234567"`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the characters before libphonenumber sees them: it would also
/// read letters as keypad digits (`+1 800 FLOWERS`) and extensions
/// (`ext. 12`), neither of which can be dialled as an E.164 number.
fn check_form(trimmed: &str) -> Result<(), PhoneNumberError> {
    if trimmed.is_empty() {
        return Err(PhoneNumberError::Empty);
    }
    let chars = trimmed.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(PhoneNumberError::TooManyCharacters { chars });
    }
    if !trimmed.starts_with('+') {
        return Err(PhoneNumberError::MissingPlus);
    }
    let invalid = trimmed
        .chars()
        .enumerate()
        .skip(1)
        .find(|(_, character)| !matches!(character, '0'..='9' | ' ' | '-' | '.' | '(' | ')'));
    match invalid {
        Some((position, character)) => Err(PhoneNumberError::InvalidCharacter {
            character,
            position,
        }),
        None => Ok(()),
    }
}

/// The valid national significant number `input` spells, if any.
///
/// libphonenumber drops a national trunk prefix written after the country
/// code (`+44 (0) 20 ...`) only when the digits as typed are not a number
/// themselves. The `phonenumber` crate drops it regardless, so `+7 812 ...`
/// (Saint Petersburg) loses its leading 8 and is refused (rust-phonenumber
/// issue #76). So the digits as typed are tried first, then without one trunk
/// prefix, then as the crate read them; the first valid one wins.
fn national_number(
    plans: &Database,
    parsed: &phonenumber::PhoneNumber,
    input: &str,
) -> Option<String> {
    let digits: String = input.chars().filter(char::is_ascii_digit).collect();
    let country_code = parsed.code().value();
    let as_typed = digits.strip_prefix(&country_code.to_string());
    let trunk_prefix = plans
        .by_code(&country_code)
        .and_then(|plans| plans.into_iter().next())
        .and_then(|plan| plan.national_prefix());
    let without_trunk_prefix = as_typed
        .zip(trunk_prefix)
        .and_then(|(typed, prefix)| typed.strip_prefix(prefix));
    let as_parsed = parsed.national().to_string();
    let respelled = [as_typed, without_trunk_prefix]
        .into_iter()
        .flatten()
        .filter(|candidate| *candidate != as_parsed)
        .find(|candidate| {
            with_national(parsed, candidate).is_some_and(|number| number.is_valid_with(plans))
        })
        .map(str::to_owned);
    respelled.or_else(|| parsed.is_valid_with(plans).then_some(as_parsed))
}

/// `number` with another national significant number. The crate builds
/// numbers only by parsing (which would drop the prefix again), so this goes
/// through its serde form, changing the one member.
fn with_national(
    number: &phonenumber::PhoneNumber,
    national: &str,
) -> Option<phonenumber::PhoneNumber> {
    let national: phonenumber::NationalNumber = national.parse().ok()?;
    let mut value = serde_json::to_value(number).ok()?;
    value
        .as_object_mut()?
        .insert("national".to_owned(), serde_json::to_value(national).ok()?);
    serde_json::from_value(value).ok()
}

/// Why a parsed number is not valid: its length, or else its prefix.
fn not_in_plan(plans: &Database, country_code: u16, national: &str) -> PhoneNumberError {
    // The region whose plan applies; for a code shared by several regions
    // (+1, +7) an invalid number may match none, so the main region speaks.
    let Some(plan) = plans
        .by_code(&country_code)
        .and_then(|plans| plans.into_iter().next())
    else {
        return PhoneNumberError::UnknownCountryCode;
    };
    let region = plan.id().to_owned();
    // The plan lists lengths per number type; a number of any other length
    // is of no type. (libphonenumber derives the general lengths the same way.)
    let descriptors = plan.descriptors();
    let mut possible_lengths: Vec<u16> = [
        descriptors.fixed_line(),
        descriptors.mobile(),
        descriptors.pager(),
        descriptors.toll_free(),
        descriptors.premium_rate(),
        descriptors.shared_cost(),
        descriptors.personal_number(),
        descriptors.voip(),
        descriptors.uan(),
        descriptors.voicemail(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|descriptor| descriptor.possible_length().iter().copied())
    .collect();
    possible_lengths.sort_unstable();
    possible_lengths.dedup();
    let digits = national.len();
    let length_ok = u16::try_from(digits).is_ok_and(|digits| possible_lengths.contains(&digits));
    if length_ok || possible_lengths.is_empty() {
        PhoneNumberError::NotInNumberingPlan {
            country_code,
            region,
        }
    } else {
        PhoneNumberError::InvalidLength {
            country_code,
            region,
            digits,
            possible_lengths,
        }
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PhoneNumber {
    type Err = PhoneNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for PhoneNumber {
    type Error = PhoneNumberError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    /// Parses as [`PhoneNumber::parse`] does: any spelling, checked against the plans.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> Result<String, PhoneNumberError> {
        PhoneNumber::parse(input).map(|number| number.as_str().to_owned())
    }

    /// Per country: spellings of one number, and its canonical form.
    const SPELLINGS: &[(&str, &[&str], &str)] = &[
        (
            "GB, London, with the trunk (0)",
            &[
                "+44 (0) 20 7183 8750",
                "+44-20-7183-8750",
                "+442071838750",
                "+44 020 7183 8750",
            ],
            "+442071838750",
        ),
        (
            "GB, mobile",
            &["+44 7911 123456", "+44 (0)7911 123 456", "+447911123456"],
            "+447911123456",
        ),
        (
            "US",
            &["+1 (415) 555-2671", "+1 415.555.2671", "+14155552671"],
            "+14155552671",
        ),
        (
            "CA",
            &["+1 (416) 555-0100", "+1-416-555-0100", "+14165550100"],
            "+14165550100",
        ),
        (
            "SA, mobile",
            &[
                "+966 50 123 4567",
                "+966 (0)50 123 4567",
                "+966-50-123-4567",
                "+966501234567",
            ],
            "+966501234567",
        ),
        (
            "DE, Berlin",
            &["+49 30 12345678", "+49 (0)30 1234 5678", "+49-30-12345678"],
            "+493012345678",
        ),
        (
            "FR, Paris",
            &[
                "+33 1 23 45 67 89",
                "+33 (0)1 23 45 67 89",
                "+33.1.23.45.67.89",
            ],
            "+33123456789",
        ),
        (
            "IN, mobile",
            &["+91 98765 43210", "+91-98765-43210", "+919876543210"],
            "+919876543210",
        ),
        (
            "AE, mobile",
            &["+971 50 123 4567", "+971 (0)50 123 4567", "+971501234567"],
            "+971501234567",
        ),
        (
            "AU, mobile",
            &["+61 4 1234 5678", "+61 (0)412 345 678", "+61412345678"],
            "+61412345678",
        ),
        (
            "JP, mobile",
            &["+81 90-1234-5678", "+81 (0)90 1234 5678", "+819012345678"],
            "+819012345678",
        ),
        (
            "BR, São Paulo mobile",
            &["+55 11 91234-5678", "+55 (11) 91234 5678", "+5511912345678"],
            "+5511912345678",
        ),
        (
            "IT, Rome: the leading 0 is part of the number",
            &["+39 06 1234 5678", "+39 0612345678", "+390612345678"],
            "+390612345678",
        ),
        (
            "RU, Saint Petersburg: the area code starts with the trunk digit 8",
            &[
                "+7 812 123 4567",
                "+7 (812) 123-45-67",
                "+7 8 812 123 4567",
                "+78121234567",
            ],
            "+78121234567",
        ),
        (
            "RU, toll-free",
            &["+7 800 123 4567", "+7 (800) 123-45-67", "+78001234567"],
            "+78001234567",
        ),
        (
            "non-geographic, international freephone",
            &["+800 1234 5678", "+80012345678"],
            "+80012345678",
        ),
    ];

    #[test]
    fn every_spelling_of_a_number_has_one_canonical_form() {
        for (what, spellings, canonical) in SPELLINGS {
            for spelling in *spellings {
                assert_eq!(
                    parse(spelling).as_deref(),
                    Ok(*canonical),
                    "{what}: {spelling:?}"
                );
            }
            assert_eq!(parse(canonical).as_deref(), Ok(*canonical), "{what}");
        }
    }

    #[test]
    fn numbers_no_plan_allows_are_refused_with_the_reason() {
        assert_eq!(
            parse("+999 1234 5678"),
            Err(PhoneNumberError::UnknownCountryCode)
        );
        assert_eq!(
            parse("+0966501234567"),
            Err(PhoneNumberError::UnknownCountryCode)
        );
        // Saudi mobile numbers have 9 digits, not 8.
        assert!(matches!(
            parse("+966 50 123 456"),
            Err(PhoneNumberError::InvalidLength {
                country_code: 966,
                digits: 8,
                ..
            })
        ));
        // UK numbers with 8 digits after +44.
        let Err(error) = parse("+44 20 7183 87") else {
            panic!("an 8-digit UK number was accepted");
        };
        assert!(
            matches!(&error, PhoneNumberError::InvalidLength { region, .. } if region == "GB"),
            "{error:?}"
        );
        assert!(error.to_string().contains("after +44 (GB)"), "{error}");
        // Right length, but no range starts like this: the Ofcom drama range
        // 07700 900xxx, US area code 000, exchange 0xx.
        for unassigned in ["+44 7700 900123", "+1 000 555 0100", "+1 415 055 0100"] {
            assert!(
                matches!(
                    parse(unassigned),
                    Err(PhoneNumberError::NotInNumberingPlan { .. })
                ),
                "{unassigned}: {:?}",
                parse(unassigned)
            );
        }
        assert!(matches!(
            parse("+1 23"),
            Err(PhoneNumberError::InvalidLength { digits: 2, .. })
        ));
        assert_eq!(parse("+1"), Err(PhoneNumberError::TooShort));
        assert_eq!(
            parse("+44 1234567890123456789"),
            Err(PhoneNumberError::TooLong)
        );
    }

    #[test]
    fn the_form_is_checked_first() {
        assert_eq!(parse("966501234567"), Err(PhoneNumberError::MissingPlus));
        assert_eq!(parse("00966501234567"), Err(PhoneNumberError::MissingPlus));
        assert_eq!(parse("   "), Err(PhoneNumberError::Empty));
        assert_eq!(
            parse("+96650x234567"),
            Err(PhoneNumberError::InvalidCharacter {
                character: 'x',
                position: 6
            })
        );
        // Keypad letters, extensions and URIs are not E.164 numbers.
        for (input, character) in [
            ("+1 800 FLOWERS", 'F'),
            ("+44 20 7183 8750 ext. 12", 'e'),
            ("+44 20 7183 8750;ext=12", ';'),
            ("+44/20/7183/8750", '/'),
        ] {
            assert!(
                matches!(parse(input), Err(PhoneNumberError::InvalidCharacter { character: c, .. }) if c == character),
                "{input}"
            );
        }
        assert_eq!(
            parse(&format!("+44 {}", "0".repeat(MAX_INPUT_CHARS))),
            Err(PhoneNumberError::TooManyCharacters {
                chars: MAX_INPUT_CHARS + 4
            })
        );
    }

    #[test]
    fn length_errors_list_the_lengths_the_plan_has() {
        assert_eq!(lengths_text(&[9]), "9");
        assert_eq!(lengths_text(&[9, 10]), "9 or 10");
        assert_eq!(lengths_text(&[7, 9, 10]), "7, 9 or 10");
        assert_eq!(lengths_text(&[4, 5, 6, 7, 9]), "4 to 7 or 9");
        let error = PhoneNumber::parse("+33 1 23 45 67 8").expect_err("8 digits");
        assert_eq!(
            error.to_string(),
            "phone number has 8 digits after +33 (FR), where numbers have 9"
        );
        let error = PhoneNumber::parse("+882 1234 5678").expect_err("unassigned");
        assert_eq!(
            error.to_string(),
            "phone number is not in the numbering plan of +882 (non-geographic)"
        );
    }

    #[test]
    fn errors_name_the_to_field() {
        let invalid = Invalid::from(PhoneNumberError::UnknownCountryCode);
        assert_eq!(invalid.field, "to");
    }

    #[test]
    fn every_regions_example_numbers_are_valid_and_canonical() {
        let plans: &Database = &NUMBERING_PLANS;
        let mut checked = 0;
        for plan in plans.iter() {
            let descriptors = plan.descriptors();
            let examples = [
                descriptors.fixed_line(),
                descriptors.mobile(),
                descriptors.toll_free(),
                descriptors.voip(),
            ];
            for example in examples.into_iter().flatten().filter_map(|d| d.example()) {
                let canonical = format!("+{}{example}", plan.country_code());
                assert_eq!(parse(&canonical), Ok(canonical.clone()), "{}", plan.id());
                checked += 1;
            }
        }
        assert!(checked > 500, "{checked} examples");
    }

    #[test]
    fn stored_numbers_are_read_by_form_alone() {
        // Valid under no plan, but in canonical form: a store can still read it.
        let stored = PhoneNumber::from_canonical("+447700900123").expect("canonical");
        assert_eq!(stored.as_str(), "+447700900123");
        for bad in [
            "447700900123",
            "+44 7700 900123",
            "+0123456789",
            "+123456",
            "+1234567890123456",
            "+",
        ] {
            assert!(
                matches!(
                    PhoneNumber::from_canonical(bad),
                    Err(PhoneNumberError::NotCanonical(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn serde_writes_the_canonical_form_and_validates() {
        let number: PhoneNumber = serde_json::from_str("\"+44 (0) 20 7183 8750\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&number).expect("serialise"),
            "\"+442071838750\""
        );
        assert!(serde_json::from_str::<PhoneNumber>("\"+999 1234 5678\"").is_err());
        assert!(serde_json::from_str::<PhoneNumber>("\"hello\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_output_is_canonical(input in "\\PC{0,24}") {
            if let Ok(number) = PhoneNumber::parse(&input) {
                prop_assert_eq!(PhoneNumber::parse(number.as_str()), Ok(number.clone()));
                prop_assert_eq!(PhoneNumber::from_canonical(number.as_str()), Ok(number));
            }
        }

        #[test]
        fn digit_strings_parse_to_themselves_or_are_refused(input in "\\+[ (]{0,2}[0-9][0-9 ().-]{0,30}") {
            if let Ok(number) = PhoneNumber::parse(&input) {
                prop_assert_eq!(PhoneNumber::parse(number.as_str()), Ok(number.clone()));
                prop_assert_eq!(PhoneNumber::from_canonical(number.as_str()), Ok(number));
            }
        }
    }
}
