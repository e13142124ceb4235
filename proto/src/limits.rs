//! Limits both ends of `gantry.inference.v1` enforce. The gateway checks them
//! first and answers a 400 naming the OpenAI parameter; the backend checks them
//! again (defence in depth: it may be called directly).
//!
//! Sampling values are limited to what can be computed: logits are `f32`, and
//! dividing them by a temperature or repetition penalty near zero overflows to
//! infinity, whose softmax is NaN. So a temperature below
//! [`TEMPERATURE_GREEDY_BELOW`] samples greedily (the limit of sampling as the
//! temperature goes to 0), and a repetition penalty must be at least
//! [`REPETITION_PENALTY_MIN`].

/// Largest `temperature`.
pub const TEMPERATURE_MAX: f32 = 2.0;
/// A `temperature` below this (0 included) picks the most likely token:
/// `logit / temperature` would overflow `f32` for temperatures near zero.
pub const TEMPERATURE_GREEDY_BELOW: f32 = 1e-5;
/// Largest `top_p` (1 = off); it must be greater than 0.
pub const TOP_P_MAX: f32 = 1.0;
/// Smallest `repetition_penalty`: a smaller one multiplies logits past `f32`.
pub const REPETITION_PENALTY_MIN: f32 = 0.01;
/// Largest `repetition_penalty`.
pub const REPETITION_PENALTY_MAX: f32 = 2.0;
/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;
/// Longest `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The temperature sampling really uses: values below
/// [`TEMPERATURE_GREEDY_BELOW`] become 0 (greedy). Callers have checked the range.
pub fn effective_temperature(temperature: f32) -> f32 {
    if temperature < TEMPERATURE_GREEDY_BELOW {
        0.0
    } else {
        temperature
    }
}

/// Why a sampling value is refused, naming the field as the OpenAI API does
/// (the backend prefixes `sampling.`).
pub fn check_sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
) -> Result<(), (&'static str, String)> {
    if let Some(t) = temperature {
        if !(0.0..=TEMPERATURE_MAX).contains(&t) {
            return Err((
                "temperature",
                format!("temperature must be between 0 and {TEMPERATURE_MAX} (got {t}); below {TEMPERATURE_GREEDY_BELOW} it is greedy"),
            ));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= TOP_P_MAX) {
            return Err((
                "top_p",
                format!("top_p must be greater than 0 and at most {TOP_P_MAX} (got {p})"),
            ));
        }
    }
    if let Some(r) = repetition_penalty {
        if !(REPETITION_PENALTY_MIN..=REPETITION_PENALTY_MAX).contains(&r) {
            return Err((
                "repetition_penalty",
                format!("repetition_penalty must be between {REPETITION_PENALTY_MIN} and {REPETITION_PENALTY_MAX} (got {r})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_cannot_be_computed_are_refused_or_greedy() {
        for t in [f32::NAN, -0.5, 2.5, f32::INFINITY, -f32::MIN_POSITIVE] {
            assert_eq!(
                check_sampling(Some(t), None, None).unwrap_err().0,
                "temperature"
            );
        }
        for r in [f32::NAN, 0.0, 1e-38, 1e-45, 0.009, 2.01, f32::INFINITY] {
            let e = check_sampling(None, None, Some(r)).unwrap_err();
            assert_eq!(e.0, "repetition_penalty", "{r}");
        }
        for p in [f32::NAN, 0.0, -1.0, 1.5] {
            assert_eq!(check_sampling(None, Some(p), None).unwrap_err().0, "top_p");
        }
        assert!(check_sampling(Some(1e-45), Some(1e-38), Some(REPETITION_PENALTY_MIN)).is_ok());
        assert_eq!(effective_temperature(1e-45), 0.0);
        assert_eq!(effective_temperature(1e-38), 0.0);
        assert_eq!(
            effective_temperature(TEMPERATURE_GREEDY_BELOW),
            TEMPERATURE_GREEDY_BELOW
        );
        assert_eq!(effective_temperature(0.7), 0.7);
    }
}
