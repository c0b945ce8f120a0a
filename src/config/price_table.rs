//! The price table: what a model costs when the config does not say.
//!
//! A deployment whose group and entry set no `price_*_per_mtok` is charged
//! at the table's entry for its upstream `model` (the exact name sent to
//! the provider: `gpt-4o-mini`, `claude-sonnet-4-5`,
//! `anthropic.claude-sonnet-4-5-20250929-v1:0`, `gemini-2.5-pro`). The
//! table is data: the built-in one ships with the crate
//! (`src/config/prices.toml`, with its source and date), and a file in the
//! same format, named by `[pricing] table`, adds or replaces entries without
//! a release. A group that neither the config nor the table prices is
//! reported at start ([`Config::unpriced`](super::Config::unpriced)), and
//! refused with `[pricing] require = true`: never silently free.
//!
//! ```
//! use tollgate::config::PriceTable;
//!
//! let table = PriceTable::builtin();
//! let p = table.get("gpt-4o-mini").unwrap();
//! assert_eq!(p.input_per_mtok, 150_000); // $0.15 per million, in micro-USD
//!
//! let mine = PriceTable::from_toml(
//!     "prices.toml",
//!     r#"
//! source = "our contract with the provider"
//! as_of = "2026-12-01"
//! [models]
//! "gpt-4o-mini" = { input = 0.1, output = 0.4 }
//! "our-finetune" = { input = 1, output = 2, cached_input = 0.5 }
//! "#,
//! )
//! .unwrap();
//! let table = table.clone().with(mine);
//! assert_eq!(table.get("gpt-4o-mini").unwrap().input_per_mtok, 100_000);
//! assert_eq!(table.get("our-finetune").unwrap().cached_input_per_mtok, Some(500_000));
//! assert!(table.get("claude-sonnet-4-5").is_some());
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use serde::Deserialize;

use super::ConfigError;
use crate::budget::Price;

/// Prices by upstream model name, with where they came from.
#[derive(Clone, Default)]
pub struct PriceTable {
    sources: Vec<(String, String)>,
    models: crate::Map<String, Price>,
}

impl std::fmt::Debug for PriceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceTable")
            .field("sources", &self.sources)
            .field("models", &self.models.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    source: String,
    as_of: String,
    #[serde(default)]
    models: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
}

static BUILTIN: LazyLock<PriceTable> = LazyLock::new(|| {
    PriceTable::from_toml("src/config/prices.toml", include_str!("prices.toml"))
        .expect("the built-in price table parses (a unit test checks it)")
});

impl PriceTable {
    /// The table shipped with the crate: public list prices of OpenAI's,
    /// Anthropic's, Google's and Bedrock's models ([`sources`](Self::sources)
    /// says from where and when).
    pub fn builtin() -> &'static PriceTable {
        &BUILTIN
    }

    /// An empty table.
    pub fn new() -> Self {
        PriceTable::default()
    }

    /// Reads a table: `source` and `as_of` (strings), and `[models]` whose
    /// entries are `"name" = { input, output, cached_input, cache_write }`
    /// in USD per million tokens (the last two optional). `path` names the
    /// file in errors.
    pub fn from_toml(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
        let mut models = crate::Map::default();
        for (name, e) in file.models {
            let usd = |field: &str, v: f64| {
                Price::micros_from_usd(v).ok_or_else(|| {
                    ConfigError::new(
                        path,
                        format!("models.\"{name}\".{field}"),
                        "must be a non-negative number of USD per million tokens",
                    )
                })
            };
            let price = Price {
                input_per_mtok: usd("input", e.input)?,
                output_per_mtok: usd("output", e.output)?,
                cached_input_per_mtok: e
                    .cached_input
                    .map(|v| usd("cached_input", v))
                    .transpose()?,
                cache_write_per_mtok: e.cache_write.map(|v| usd("cache_write", v)).transpose()?,
            };
            models.insert(name, price);
        }
        Ok(PriceTable {
            sources: vec![(file.source, file.as_of)],
            models,
        })
    }

    /// This table with `other`'s entries added, replacing same-named ones.
    pub fn with(mut self, other: PriceTable) -> Self {
        self.sources.extend(other.sources);
        self.models.extend(other.models);
        self
    }

    /// The price of the upstream model `model` (exact name).
    pub fn get(&self, model: &str) -> Option<Price> {
        self.models.get(model).copied()
    }

    /// How many models the table prices.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table prices no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Where the entries came from: `(source, as_of)`, the built-in table's
    /// first, then each added file's.
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_prices_each_provider() {
        let t = PriceTable::builtin();
        assert!(t.len() > 300, "{}", t.len());
        assert_eq!(t.sources().len(), 1);
        assert!(t.sources()[0].0.contains("litellm"));
        for (model, input, output) in [
            ("gpt-4o-mini", 150_000, 600_000),
            ("gpt-4o", 2_500_000, 10_000_000),
            ("claude-sonnet-4-5", 3_000_000, 15_000_000),
            ("gemini-2.5-pro", 1_250_000, 10_000_000),
            (
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                3_000_000,
                15_000_000,
            ),
        ] {
            let p = t.get(model).unwrap_or_else(|| panic!("{model}"));
            assert_eq!(
                (p.input_per_mtok, p.output_per_mtok),
                (input, output),
                "{model}"
            );
        }
        let claude = t.get("claude-sonnet-4-5").unwrap();
        assert_eq!(claude.cached_input_per_mtok, Some(300_000));
        assert_eq!(claude.cache_write_per_mtok, Some(3_750_000));
        // Every chat model has a price; only embeddings are free of output.
        for (name, p) in &t.models {
            assert!(p.input_per_mtok > 0, "{name}");
            assert!(p.output_per_mtok > 0 || name.contains("embed"), "{name}");
        }
        assert_eq!(t.get("GPT-4O-MINI"), None, "exact names only");
    }

    #[test]
    fn a_bad_table_is_refused_naming_the_entry() {
        let e = PriceTable::from_toml(
            "p.toml",
            "source = \"s\"\nas_of = \"d\"\n[models]\n\"m\" = { input = -1, output = 2 }\n",
        )
        .unwrap_err();
        assert_eq!(e.field(), "models.\"m\".input");
        let e = PriceTable::from_toml(
            "p.toml",
            "source = \"s\"\nas_of = \"d\"\n[models]\n\"m\" = { input = 1, output = 2, extra = 3 }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
        assert!(
            PriceTable::from_toml("p.toml", "[models]\n").is_err(),
            "source and as_of are required"
        );
    }
}
