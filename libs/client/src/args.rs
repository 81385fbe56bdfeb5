//! Argument conversions of the builders: model references (object or `"provider/name"`),
//! attribute values and routing features from plain Rust values.

use modelperf_schema::{AttrValue, Feature, ModelRef};

/// A model reference argument: a [`ModelRef`], or the short form `"provider/name"` (a string that
/// does not parse makes [`crate::EventBuilder::build`] fail, naming the field).
pub trait IntoModelRef {
    /// The reference, or why the string is not one.
    fn into_model_ref(self) -> Result<ModelRef, String>;
}

impl IntoModelRef for ModelRef {
    fn into_model_ref(self) -> Result<ModelRef, String> {
        Ok(self)
    }
}

impl IntoModelRef for &ModelRef {
    fn into_model_ref(self) -> Result<ModelRef, String> {
        Ok(self.clone())
    }
}

impl IntoModelRef for &str {
    fn into_model_ref(self) -> Result<ModelRef, String> {
        ModelRef::parse_short(self).ok_or_else(|| format!("`{self}` is not of the form \"provider/name\""))
    }
}

impl IntoModelRef for String {
    fn into_model_ref(self) -> Result<ModelRef, String> {
        self.as_str().into_model_ref()
    }
}

impl IntoModelRef for &String {
    fn into_model_ref(self) -> Result<ModelRef, String> {
        self.as_str().into_model_ref()
    }
}

/// An attribute value argument: strings, booleans, integers and floats.
pub trait IntoAttrValue {
    /// The wire value.
    fn into_attr_value(self) -> AttrValue;
}

impl IntoAttrValue for AttrValue {
    fn into_attr_value(self) -> AttrValue {
        self
    }
}

impl IntoAttrValue for &str {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Text(self.to_owned())
    }
}

impl IntoAttrValue for String {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Text(self)
    }
}

impl IntoAttrValue for bool {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Bool(self)
    }
}

impl IntoAttrValue for i64 {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Int(self)
    }
}

impl IntoAttrValue for i32 {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Int(i64::from(self))
    }
}

impl IntoAttrValue for u32 {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Int(i64::from(self))
    }
}

impl IntoAttrValue for u64 {
    fn into_attr_value(self) -> AttrValue {
        // Beyond i64 the wire has only floats, as the decoder does for such numbers.
        i64::try_from(self).map_or(AttrValue::Float(self as f64), AttrValue::Int)
    }
}

impl IntoAttrValue for f64 {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Float(self)
    }
}

impl IntoAttrValue for f32 {
    fn into_attr_value(self) -> AttrValue {
        AttrValue::Float(f64::from(self))
    }
}

/// A decision-time feature argument of a routing decision: a string or a number.
pub trait IntoFeature {
    /// The wire value.
    fn into_feature(self) -> Feature;
}

impl IntoFeature for Feature {
    fn into_feature(self) -> Feature {
        self
    }
}

impl IntoFeature for &str {
    fn into_feature(self) -> Feature {
        Feature::Text(self.to_owned())
    }
}

impl IntoFeature for String {
    fn into_feature(self) -> Feature {
        Feature::Text(self)
    }
}

impl IntoFeature for f64 {
    fn into_feature(self) -> Feature {
        Feature::Number(self)
    }
}

impl IntoFeature for i64 {
    fn into_feature(self) -> Feature {
        Feature::Number(self as f64)
    }
}

impl IntoFeature for i32 {
    fn into_feature(self) -> Feature {
        Feature::Number(f64::from(self))
    }
}

impl IntoFeature for u32 {
    fn into_feature(self) -> Feature {
        Feature::Number(f64::from(self))
    }
}

impl IntoFeature for u64 {
    fn into_feature(self) -> Feature {
        Feature::Number(self as f64)
    }
}
