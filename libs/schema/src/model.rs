//! Model references: `{provider, name, version?, vendor?}` or the short form `"provider/name"`.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A reference to a model as the billing API knows it.
///
/// On the wire it is an object; producers may also send the string `"provider/name"`, which is
/// normalised to the object form (the first `/` separates provider and name, so
/// `"together/meta-llama/Llama-3-70b"` has the name `meta-llama/Llama-3-70b`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[schemars(transform = allow_short_form)]
pub struct ModelRef {
    /// The billing API: `openai`, `anthropic`, `azure_openai`, `bedrock`, `vertex`, `together`, ...
    pub provider: String,
    /// The model name as the provider spells it, e.g. `gpt-4o-mini`.
    pub name: String,
    /// A pinned model version or snapshot, e.g. `2024-07-18`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Who made the model, when it differs from the provider (e.g. `meta` on `together`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

impl ModelRef {
    /// A reference without version or vendor.
    pub fn new(provider: impl Into<String>, name: impl Into<String>) -> Self {
        Self { provider: provider.into(), name: name.into(), version: None, vendor: None }
    }

    /// The same reference with a version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Parses the short form `"provider/name"`.
    pub fn parse_short(s: &str) -> Option<Self> {
        let (provider, name) = s.split_once('/')?;
        if provider.trim().is_empty() || name.trim().is_empty() {
            return None;
        }
        Some(Self::new(provider, name))
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "@{v}")?;
        }
        Ok(())
    }
}

fn allow_short_form(schema: &mut schemars::Schema) {
    let object = schema.clone();
    *schema = schemars::json_schema!({
        "description": "A model reference: an object, or the short form \"provider/name\".",
        "oneOf": [
            object,
            {"type": "string", "pattern": "^[^/]+/.+$", "description": "\"provider/name\""}
        ]
    });
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ModelRefVisitor)
    }
}

struct ModelRefVisitor;

impl<'de> Visitor<'de> for ModelRefVisitor {
    type Value = ModelRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a model object {provider, name} or a string \"provider/name\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelRef, E> {
        ModelRef::parse_short(v)
            .ok_or_else(|| E::custom(format!("model string `{v}` is not of the form \"provider/name\"")))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelRef, A::Error> {
        let (mut provider, mut name, mut version, mut vendor) = (None, None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "provider" => provider = Some(map.next_value::<String>()?),
                "name" => name = Some(map.next_value::<String>()?),
                "version" => version = map.next_value::<Option<String>>()?,
                "vendor" => vendor = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        let provider = provider.ok_or_else(|| de::Error::missing_field("provider"))?;
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        if provider.is_empty() {
            return Err(de::Error::custom("model provider is empty"));
        }
        if name.is_empty() {
            return Err(de::Error::custom("model name is empty"));
        }
        Ok(ModelRef { provider, name, version, vendor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_splits_at_first_slash() {
        let m: ModelRef = serde_json::from_str("\"together/meta-llama/Llama-3-70b\"").unwrap();
        assert_eq!(m.provider, "together");
        assert_eq!(m.name, "meta-llama/Llama-3-70b");
    }

    #[test]
    fn object_form_and_errors() {
        let m: ModelRef =
            serde_json::from_str(r#"{"provider":"openai","name":"gpt-4o","version":"2024-08-06"}"#).unwrap();
        assert_eq!(m.version.as_deref(), Some("2024-08-06"));
        assert!(serde_json::from_str::<ModelRef>("\"gpt-4o\"").is_err());
        assert!(serde_json::from_str::<ModelRef>(r#"{"provider":"openai"}"#).is_err());
        assert!(serde_json::from_str::<ModelRef>(r#"{"provider":"","name":"x"}"#).is_err());
    }
}
