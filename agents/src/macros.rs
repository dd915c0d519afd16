//! Declarative helpers for ProtoJSON enums and `oneof` wrapper objects.

/// Declares a ProtoJSON enum: serialized as its proto name, parsed from the name or the number.
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $num:literal => $wire:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant,)+ }

        impl $name {
            /// Every value, in proto order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The proto enum name (the ProtoJSON spelling).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)+ }
            }

            /// The proto enum number.
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num,)+ }
            }

            /// Parses a proto enum name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($wire => Some($name::$variant),)+ _ => None }
            }

            fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match <serde_json::Value as serde::Deserialize>::deserialize(d)? {
                    serde_json::Value::String(s) => $name::from_name(&s).ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        <D::Error as serde::de::Error>::custom(format!(
                            "invalid {} value '{}'; must be one of: {}",
                            stringify!($name), s, names.join(", ")
                        ))
                    }),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then($name::from_number)
                        .ok_or_else(|| <D::Error as serde::de::Error>::custom(format!("invalid {} number {n}", stringify!($name)))),
                    other => Err(<D::Error as serde::de::Error>::custom(format!(
                        "invalid {}: expected a string, got {other}", stringify!($name)
                    ))),
                }
            }
        }
    };
}

/// Declares a ProtoJSON `oneof` wrapper object: exactly one member, named in camelCase.
macro_rules! proto_oneof {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident($ty:ty) => $wire:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name { $($(#[$vm])* $variant($ty),)+ }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                match self { $($name::$variant(v) => map.serialize_entry($wire, v)?,)+ }
                map.end()
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let map = <serde_json::Map<String, serde_json::Value> as serde::Deserialize>::deserialize(d)?;
                let members: &[&str] = &[$($wire,)+];
                let found: Vec<&str> = members.iter().copied().filter(|k| map.contains_key(*k)).collect();
                if found.len() != 1 {
                    return Err(<D::Error as serde::de::Error>::custom(format!(
                        "{} must have exactly one of {} (found {})",
                        stringify!($name), members.join(", "), found.len()
                    )));
                }
                let mut map = map;
                let (key, value) = match found.first().and_then(|k| map.remove_entry(*k)) {
                    Some(kv) => kv,
                    None => return Err(<D::Error as serde::de::Error>::custom("oneof member vanished")),
                };
                match key.as_str() {
                    $($wire => serde_json::from_value(value).map($name::$variant).map_err(<D::Error as serde::de::Error>::custom),)+
                    _ => Err(<D::Error as serde::de::Error>::custom("unknown oneof member")),
                }
            }
        }
    };
}
