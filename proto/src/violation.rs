//! The backend's refusals of a request as data: an `INVALID_ARGUMENT` status
//! carries a `google.rpc.BadRequest` with one field violation naming the
//! request field as the proto names it (`sampling.max_tokens`,
//! `chat.messages[1].role`, `inputs[3]`), and its message says the limit.
//! The gateway maps fields to its API's parameters from a table; neither end
//! parses the other's English.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT` naming `field` (a proto path, indexes included).
pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Status {
    let message = message.into();
    let details = ErrorDetails::with_bad_request_violation(field, message.clone());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The field a refusal names, if it carries one.
pub fn violated_field(status: &Status) -> Option<String> {
    let details = status.get_error_details();
    let violation = details.bad_request()?.field_violations.first()?;
    Some(violation.field.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_its_field_through_the_wire_form() {
        let sent = invalid_field(
            "chat.messages[1].role",
            "must be one of system, user, assistant",
        );
        // As the transport carries it: code, message and binary details.
        let received =
            Status::with_details(sent.code(), sent.message(), sent.details().to_vec().into());
        assert_eq!(received.code(), Code::InvalidArgument);
        assert_eq!(received.message(), "must be one of system, user, assistant");
        assert_eq!(
            violated_field(&received).as_deref(),
            Some("chat.messages[1].role")
        );
        assert_eq!(
            violated_field(&Status::invalid_argument("no details")),
            None
        );
    }
}
