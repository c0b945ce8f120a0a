//! Token usage as providers really report it, and prices per million tokens.

use serde_json::Value;

use super::ledger::Micros;

/// Tokens a call used, as reported by the upstream (or estimated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of `prompt_tokens`).
    pub cached_tokens: u64,
}

/// A count as providers send it: an integer, a float (rounded: known
/// failure #12), a numeric string; anything else, negative or missing is `None`.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.round() as u64)
        }),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64),
        _ => None,
    }
}

impl TokenUsage {
    /// Reads a `usage` object in the Chat Completions shape (`prompt_tokens`,
    /// `completion_tokens`, `prompt_tokens_details.cached_tokens`) or the
    /// Responses API shape (`input_tokens`, `output_tokens`,
    /// `input_tokens_details.cached_tokens`). Floats are rounded and missing
    /// fields count zero; `None` when neither input nor output is given.
    pub fn from_json(usage: &Value) -> Option<TokenUsage> {
        let prompt = count(usage.get("prompt_tokens")).or_else(|| count(usage.get("input_tokens")));
        let completion =
            count(usage.get("completion_tokens")).or_else(|| count(usage.get("output_tokens")));
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        let prompt_tokens = prompt.unwrap_or(0);
        let cached = usage
            .get("prompt_tokens_details")
            .or_else(|| usage.get("input_tokens_details"))
            .and_then(|d| count(d.get("cached_tokens")));
        Some(TokenUsage {
            prompt_tokens,
            completion_tokens: completion.unwrap_or(0),
            cached_tokens: cached.unwrap_or(0).min(prompt_tokens),
        })
    }

    /// The usage in one response JSON object or SSE event: a top-level
    /// non-null `usage` (Chat Completions, completions, embeddings) or
    /// `response.usage` (Responses API `response.completed`).
    pub fn in_event(event: &Value) -> Option<TokenUsage> {
        let usage = match event.get("usage") {
            Some(u) if !u.is_null() => u,
            _ => event.get("response")?.get("usage")?,
        };
        TokenUsage::from_json(usage)
    }
}

/// A model's price, in micro-USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    /// Per million input tokens.
    pub input_per_mtok: Micros,
    /// Per million output tokens.
    pub output_per_mtok: Micros,
    /// Per million cached input tokens, where the provider reports them
    /// (`None`: charged as ordinary input).
    pub cached_input_per_mtok: Option<Micros>,
}

/// `tokens × per_mtok / 1e6`, rounded up: a call is never charged less than it cost.
fn cost_of(tokens: u64, per_mtok: Micros) -> Micros {
    let micros = (u128::from(tokens) * u128::from(per_mtok)).div_ceil(1_000_000);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

impl Price {
    /// Dollars per million tokens as micro-USD per million tokens (config
    /// values like `2.5`), rounded to the micro-dollar; `None` when negative
    /// or not finite.
    pub fn micros_from_usd(usd: f64) -> Option<Micros> {
        (0.0..1e12)
            .contains(&usd)
            .then(|| (usd * 1e6).round() as Micros)
    }

    /// What `usage` costs.
    pub fn cost(&self, usage: &TokenUsage) -> Micros {
        let cached = match self.cached_input_per_mtok {
            Some(p) => cost_of(usage.cached_tokens, p),
            None => cost_of(usage.cached_tokens, self.input_per_mtok),
        };
        let uncached = usage.prompt_tokens.saturating_sub(usage.cached_tokens);
        cost_of(uncached, self.input_per_mtok)
            .saturating_add(cached)
            .saturating_add(cost_of(usage.completion_tokens, self.output_per_mtok))
    }

    /// The worst case of a request: `prompt_tokens` at the input price plus
    /// `max_output_tokens` at the output price.
    pub fn worst_case(&self, prompt_tokens: u64, max_output_tokens: u64) -> Micros {
        self.cost(&TokenUsage {
            prompt_tokens,
            completion_tokens: max_output_tokens,
            cached_tokens: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_as_providers_send_them() {
        let u = TokenUsage::from_json(&json!({
            "prompt_tokens": 10.5, "completion_tokens": 3.0, "total_tokens": 13.5
        }))
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 3));
        let u = TokenUsage::from_json(&json!({"completion_tokens": "7"})).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 7));
        let u = TokenUsage::from_json(&json!({
            "input_tokens": 100, "output_tokens": 5,
            "input_tokens_details": {"cached_tokens": 400}
        }))
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (100, 5, 100)
        );
        assert_eq!(TokenUsage::from_json(&json!({"total_tokens": 4})), None);
        assert_eq!(TokenUsage::from_json(&json!({"prompt_tokens": -3})), None);
        assert_eq!(
            TokenUsage::in_event(&json!({"usage": null, "choices": []})),
            None
        );
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 2, "output_tokens": 1}}});
        assert_eq!(TokenUsage::in_event(&done).unwrap().completion_tokens, 1);
    }

    #[test]
    fn costs_in_integer_micros_rounded_up() {
        let p = Price {
            input_per_mtok: Price::micros_from_usd(2.5).unwrap(),
            output_per_mtok: Price::micros_from_usd(10.0).unwrap(),
            cached_input_per_mtok: Some(Price::micros_from_usd(1.25).unwrap()),
        };
        // 1M prompt tokens, 400k of them cached, 100k output:
        // 0.6 × 2.5 + 0.4 × 1.25 + 0.1 × 10 = 3.0 dollars.
        let u = TokenUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
            cached_tokens: 400_000,
        };
        assert_eq!(p.cost(&u), 3_000_000);
        // One token of input costs 2.5 micro-dollars: charged 3.
        assert_eq!(p.worst_case(1, 0), 3);
        assert_eq!(p.worst_case(0, 0), 0);
        assert_eq!(Price::micros_from_usd(-1.0), None);
        // A thousand calls of one token each sum exactly.
        let sum: u64 = (0..1000).map(|_| p.worst_case(1, 1)).sum();
        assert_eq!(sum, 13_000);
    }
}
