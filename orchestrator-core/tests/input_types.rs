//! The input types seen from outside the crate: conversions, wire names and
//! the exact bounds, as an embedder or the HTTP crate relies on them.

use orchestrator_core::phone::MAX_INPUT_CHARS;
use orchestrator_core::validate::{validate_provider_call_id, MAX_PROVIDER_CALL_ID_CHARS};
use orchestrator_core::{CallStatus, IdempotencyKey, Invalid, Metadata, PhoneNumber, ScriptId};
use serde_json::{json, Value};

#[test]
fn only_completed_failed_expired_and_canceled_are_terminal() {
    let terminal: Vec<CallStatus> = CallStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [
            CallStatus::Completed,
            CallStatus::Failed,
            CallStatus::Expired,
            CallStatus::Canceled
        ]
    );
}

#[test]
fn call_statuses_parse_from_their_wire_names_only() {
    for status in CallStatus::ALL {
        assert_eq!(status.as_str().parse::<CallStatus>(), Ok(status));
        assert_eq!(status.to_string(), status.as_str());
    }
    let unknown = "in_progress".parse::<CallStatus>().unwrap_err();
    assert_eq!(unknown.0, "in_progress");
}

#[test]
fn a_script_id_reads_back_as_given() {
    let id = ScriptId::parse("welcomeFlow").unwrap();
    assert_eq!(id.as_str(), "welcomeFlow");
    assert_eq!(id.as_ref(), "welcomeFlow");
    assert_eq!(id.to_string(), "welcomeFlow");
    assert!(id == *"welcomeFlow" && id == "welcomeFlow");
    assert!(id != *"welcome" && id != "welcomeFlows");
    assert_eq!(id.into_string(), "welcomeFlow");
}

#[test]
fn metadata_gives_back_the_object_it_holds() {
    let object = json!({"customer": 17, "tags": ["vip"]});
    let metadata = Metadata::new(object.clone()).unwrap();
    assert_eq!(metadata.as_value(), &object);
    assert_eq!(Value::from(metadata.clone()), object);
    assert_eq!(metadata.into_value(), object);
}

#[test]
fn metadata_that_is_not_an_object_is_refused_naming_its_type() {
    for (value, kind) in [
        (json!(null), "null"),
        (json!(true), "a boolean"),
        (json!(1), "a number"),
        (json!("x"), "a string"),
        (json!([1]), "an array"),
    ] {
        assert_eq!(
            Metadata::new(value),
            Err(Invalid::new(
                "metadata",
                format!("must be a JSON object, not {kind}")
            ))
        );
    }
}

#[test]
fn metadata_may_take_up_to_16_kib_of_json() {
    assert_eq!(Metadata::MAX_BYTES, 16 * 1024);
    // `{"k":"…"}` is 8 bytes around the string.
    let fits = json!({ "k": "x".repeat(Metadata::MAX_BYTES - 8) });
    assert_eq!(fits.to_string().len(), Metadata::MAX_BYTES);
    assert!(Metadata::new(fits).is_ok_and(|m| m.as_value().is_object()));
    let over = json!({ "k": "x".repeat(Metadata::MAX_BYTES - 7) });
    assert_eq!(
        Metadata::new(over).map_err(|invalid| invalid.field),
        Err("metadata")
    );
}

#[test]
fn an_idempotency_key_reads_back_as_given() {
    let key = IdempotencyKey::parse("order-17").unwrap();
    assert_eq!(key.as_str(), "order-17");
    assert_eq!(key.as_ref(), "order-17");
    assert_eq!(key.to_string(), "order-17");
}

#[test]
fn a_phone_number_reads_back_in_canonical_form() {
    let number = PhoneNumber::parse("+44 20 7183 8750").unwrap();
    assert_eq!(number.as_str(), "+442071838750");
    assert_eq!(number.as_ref(), "+442071838750");
    assert_eq!(number.to_string(), "+442071838750");
}

#[test]
fn a_phone_number_may_be_written_in_up_to_the_longest_accepted_spelling() {
    // "+44", a run of spaces, "20 7183 8750": exactly the longest spelling.
    let padded = format!("+44{}20 7183 8750", " ".repeat(MAX_INPUT_CHARS - 15));
    assert_eq!(padded.chars().count(), MAX_INPUT_CHARS);
    assert_eq!(
        PhoneNumber::parse(&padded).map(|number| number.to_string()),
        Ok("+442071838750".to_owned())
    );
}

#[test]
fn a_provider_call_id_may_be_exactly_the_longest_allowed() {
    let longest = "x".repeat(MAX_PROVIDER_CALL_ID_CHARS);
    assert_eq!(validate_provider_call_id(&longest), Ok(()));
    let over = "x".repeat(MAX_PROVIDER_CALL_ID_CHARS + 1);
    assert_eq!(
        validate_provider_call_id(&over).map_err(|invalid| invalid.field),
        Err("callId")
    );
}
