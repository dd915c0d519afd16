//! Agent cards: building one from an [`AgentDescriptor`] and the node's values, its JCS
//! (RFC 8785) canonical form without `signatures`, and JWS signatures over it (spec §8.4)
//! with EdDSA (Ed25519) and a `kid` naming the node.
//!
//! Verification works on the card JSON as received (a `serde_json::Value`), not on a re-encoded
//! typed card: fields this crate does not know stay in the signed payload.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::agent::AgentDescriptor;
use crate::card::{
    AgentCapabilities, AgentCard, AgentCardSignature, AgentInterface, AgentProvider,
    BINDING_HTTP_JSON, BINDING_JSONRPC, PROTOCOL_VERSION, SecurityRequirement, SecurityScheme,
};
use crate::skill::CONVENTION;

/// JWS `alg` of the node's signatures.
pub const JWS_ALG: &str = "EdDSA";

/// Why a card could not be built, canonicalized, signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// The agent id is not a path segment `[a-z0-9-]{1,64}`.
    #[error("agent id '{0}' must be 1 to 64 characters of a-z, 0-9 and '-'")]
    InvalidAgentId(String),
    /// The node's base URL is not an absolute http(s) URL without query or fragment.
    #[error("base URL '{0}' must be an absolute http(s) URL without query or fragment")]
    InvalidBaseUrl(String),
    /// The card is not a JSON object or could not be encoded.
    #[error("the card cannot be canonicalized: {0}")]
    Canonical(String),
    /// No signature verifies with the expected key and `kid`.
    #[error("no signature of the card verifies for kid '{0}'")]
    NotVerified(String),
}

/// The node's values a card needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardContext {
    /// Public base URL of the node (`https://node.example`).
    pub base_url: String,
    /// The node's security schemes (its real JWT/OIDC auth).
    pub security_schemes: BTreeMap<String, SecurityScheme>,
    /// Requirements over those schemes.
    pub security_requirements: Vec<SecurityRequirement>,
    /// Push notification configs are served.
    pub push_notifications: bool,
    /// `GetExtendedAgentCard` is served.
    pub extended_agent_card: bool,
    /// The provider block.
    pub provider: Option<AgentProvider>,
    /// Documentation URL.
    pub documentation_url: Option<String>,
}

fn base(base_url: &str) -> Result<String, CardError> {
    let bad = || CardError::InvalidBaseUrl(base_url.to_owned());
    let url = url::Url::parse(base_url).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    if url.host_str().is_none() {
        return Err(bad());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn check_agent_id(id: &str) -> Result<(), CardError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CardError::InvalidAgentId(id.to_owned()))
    }
}

/// URL of the agent's HTTP+JSON interface: `<base>/a2a/<agent>` (REST paths below it).
pub fn rest_url(base_url: &str, agent_id: &str) -> Result<String, CardError> {
    check_agent_id(agent_id)?;
    Ok(format!("{}/a2a/{agent_id}", base(base_url)?))
}

/// URL of the agent's JSON-RPC interface: `<base>/a2a/<agent>/jsonrpc`.
pub fn jsonrpc_url(base_url: &str, agent_id: &str) -> Result<String, CardError> {
    Ok(format!("{}/jsonrpc", rest_url(base_url, agent_id)?))
}

/// URL of the agent's card: `<base>/a2a/<agent>/.well-known/agent-card.json`.
pub fn card_url(base_url: &str, agent_id: &str) -> Result<String, CardError> {
    Ok(format!(
        "{}/.well-known/agent-card.json",
        rest_url(base_url, agent_id)?
    ))
}

/// Builds an agent's card: both interfaces (JSON-RPC first), the skill convention appended to
/// each skill description, capabilities set explicitly, the node's security values.
pub fn build_card(agent: &AgentDescriptor, ctx: &CardContext) -> Result<AgentCard, CardError> {
    let skills = agent
        .skills
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if !s.description.contains("metadata.skill") {
                s.description = format!(
                    "{} {}",
                    s.description.trim_end(),
                    CONVENTION.replace("{id}", &s.id)
                );
            }
            s
        })
        .collect();
    let interface = |url: String, binding: &str| AgentInterface {
        url,
        protocol_binding: binding.to_owned(),
        tenant: None,
        protocol_version: PROTOCOL_VERSION.to_owned(),
    };
    Ok(AgentCard {
        name: agent.name.clone(),
        description: agent.description.clone(),
        supported_interfaces: vec![
            interface(jsonrpc_url(&ctx.base_url, &agent.id)?, BINDING_JSONRPC),
            interface(rest_url(&ctx.base_url, &agent.id)?, BINDING_HTTP_JSON),
        ],
        provider: ctx.provider.clone(),
        version: agent.version.clone(),
        documentation_url: ctx.documentation_url.clone(),
        capabilities: AgentCapabilities {
            streaming: Some(agent.streaming),
            push_notifications: Some(ctx.push_notifications),
            extensions: Vec::new(),
            extended_agent_card: Some(ctx.extended_agent_card),
        },
        security_schemes: ctx.security_schemes.clone(),
        security_requirements: ctx.security_requirements.clone(),
        default_input_modes: agent.input_modes.clone(),
        default_output_modes: agent.output_modes.clone(),
        skills,
        signatures: Vec::new(),
        icon_url: None,
    })
}

/// JCS (RFC 8785) bytes of any JSON value.
pub fn jcs(value: &Value) -> Result<Vec<u8>, CardError> {
    serde_jcs::to_vec(value).map_err(|e| CardError::Canonical(e.to_string()))
}

/// The signed payload of a card: its JSON without `signatures`, in JCS form.
pub fn card_payload(card: &Value) -> Result<Vec<u8>, CardError> {
    let Value::Object(obj) = card else {
        return Err(CardError::Canonical("a card is a JSON object".into()));
    };
    let mut obj = obj.clone();
    obj.remove("signatures");
    jcs(&Value::Object(obj))
}

/// Signs a card with the node's key; the signature is appended to `signatures`.
pub fn sign_card(card: &mut AgentCard, key: &SigningKey, kid: &str) -> Result<(), CardError> {
    let value = serde_json::to_value(&*card).map_err(|e| CardError::Canonical(e.to_string()))?;
    let payload = card_payload(&value)?;
    let header = jcs(&json!({"alg": JWS_ALG, "typ": "JOSE", "kid": kid}))?;
    let protected = B64.encode(header);
    let input = format!("{protected}.{}", B64.encode(payload));
    let signature = key.sign(input.as_bytes());
    card.signatures.push(AgentCardSignature {
        protected,
        signature: B64.encode(signature.to_bytes()),
        header: None,
    });
    Ok(())
}

/// Verifies a received card (raw JSON): one of its signatures must carry `alg: EdDSA` and
/// `kid == expected_kid` in its protected header and verify with `key`.
pub fn verify_card(card: &Value, key: &VerifyingKey, expected_kid: &str) -> Result<(), CardError> {
    let payload = B64.encode(card_payload(card)?);
    let signatures = card
        .get("signatures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for sig in signatures {
        let (Some(protected), Some(signature)) = (
            sig.get("protected").and_then(Value::as_str),
            sig.get("signature").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some(header) = B64
            .decode(protected)
            .ok()
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        else {
            continue;
        };
        if header.get("alg").and_then(Value::as_str) != Some(JWS_ALG)
            || header.get("kid").and_then(Value::as_str) != Some(expected_kid)
        {
            continue;
        }
        let Some(signature) = B64
            .decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
        else {
            continue;
        };
        let input = format!("{protected}.{payload}");
        if key.verify_strict(input.as_bytes(), &signature).is_ok() {
            return Ok(());
        }
    }
    Err(CardError::NotVerified(expected_kid.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::agent::Agent as _;
    use crate::card::HttpAuthSecurityScheme;
    use crate::echo::EchoAgent;

    #[test]
    fn rfc8785_section_3_2_2_example() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(jcs(&v).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_section_3_2_3_sorting_by_utf16() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(jcs(&v).unwrap()).unwrap();
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(out, expected);
    }

    #[test]
    fn spec_8_4_1_default_values_example() {
        // The example fragment goes through the typed capabilities (presence rules), then JCS.
        let caps: AgentCapabilities = serde_json::from_value(
            json!({"streaming": false, "pushNotifications": false, "extensions": []}),
        )
        .unwrap();
        let card = json!({"name": "Example Agent", "description": "", "capabilities": caps, "skills": [],
                          "signatures": [{"protected": "x", "signature": "y"}]});
        assert_eq!(
            String::from_utf8(card_payload(&card).unwrap()).unwrap(),
            r#"{"capabilities":{"pushNotifications":false,"streaming":false},"description":"","name":"Example Agent","skills":[]}"#
        );
    }

    fn ctx() -> CardContext {
        let mut schemes = BTreeMap::new();
        schemes.insert(
            "bearer".into(),
            SecurityScheme::HttpAuth(HttpAuthSecurityScheme {
                description: String::new(),
                scheme: "Bearer".into(),
                bearer_format: "JWT".into(),
            }),
        );
        let mut req = SecurityRequirement::default();
        req.schemes.insert("bearer".into(), Default::default());
        CardContext {
            base_url: "https://node.example/".into(),
            security_schemes: schemes,
            security_requirements: vec![req],
            ..CardContext::default()
        }
    }

    #[test]
    fn builds_the_echo_card() {
        let card = build_card(EchoAgent::new().descriptor(), &ctx()).unwrap();
        let v = serde_json::to_value(&card).unwrap();
        assert_eq!(
            v["supportedInterfaces"],
            json!([
                {"url": "https://node.example/a2a/echo/jsonrpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "https://node.example/a2a/echo", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"}
            ])
        );
        assert_eq!(
            v["capabilities"],
            json!({"streaming": true, "pushNotifications": false, "extendedAgentCard": false})
        );
        assert_eq!(
            v["securityRequirements"],
            json!([{"schemes": {"bearer": {"list": []}}}])
        );
        assert!(
            card.skills[0]
                .description
                .contains("metadata.skill = \"echo\"")
        );
        assert_eq!(
            card_url("https://node.example", "echo").unwrap(),
            "https://node.example/a2a/echo/.well-known/agent-card.json"
        );
        // The card reads back as it was written.
        assert_eq!(serde_json::from_value::<AgentCard>(v).unwrap(), card);
    }

    #[test]
    fn refuses_bad_ids_and_base_urls() {
        let mut d = EchoAgent::new().descriptor().clone();
        d.id = "Echo/..".into();
        assert!(matches!(
            build_card(&d, &ctx()),
            Err(CardError::InvalidAgentId(_))
        ));
        for bad in ["ftp://x", "https://x/?q=1", "not a url", "https://x/#f"] {
            let c = CardContext {
                base_url: bad.into(),
                ..ctx()
            };
            assert!(
                matches!(
                    build_card(EchoAgent::new().descriptor(), &c),
                    Err(CardError::InvalidBaseUrl(_))
                ),
                "{bad}"
            );
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_then_verify_and_tampering_fails() {
        let mut card = build_card(EchoAgent::new().descriptor(), &ctx()).unwrap();
        sign_card(&mut card, &key(7), "node-1").unwrap();
        let header: Value =
            serde_json::from_slice(&B64.decode(&card.signatures[0].protected).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({"alg": "EdDSA", "typ": "JOSE", "kid": "node-1"})
        );
        let v = serde_json::to_value(&card).unwrap();
        let vk = key(7).verifying_key();
        verify_card(&v, &vk, "node-1").unwrap();
        // Key order and whitespace of the received JSON do not matter (JCS).
        let reparsed: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        verify_card(&reparsed, &vk, "node-1").unwrap();

        let mut tampered = v.clone();
        tampered["description"] = json!("Something else");
        assert_eq!(
            verify_card(&tampered, &vk, "node-1"),
            Err(CardError::NotVerified("node-1".into()))
        );
        let mut added = v.clone();
        added["capabilities"]["pushNotifications"] = json!(true);
        assert!(verify_card(&added, &vk, "node-1").is_err());
        assert!(
            verify_card(&v, &key(8).verifying_key(), "node-1").is_err(),
            "other key"
        );
        assert!(verify_card(&v, &vk, "node-2").is_err(), "other kid");
        let mut unsigned = v.clone();
        unsigned.as_object_mut().unwrap().remove("signatures");
        assert!(verify_card(&unsigned, &vk, "node-1").is_err());
    }

    #[test]
    fn a_second_signature_and_unknown_fields_still_verify() {
        let mut card = build_card(EchoAgent::new().descriptor(), &ctx()).unwrap();
        sign_card(&mut card, &key(1), "old-node-key").unwrap();
        sign_card(&mut card, &key(2), "node-1").unwrap();
        let mut v = serde_json::to_value(&card).unwrap();
        verify_card(&v, &key(1).verifying_key(), "old-node-key").unwrap();
        verify_card(&v, &key(2).verifying_key(), "node-1").unwrap();
        // A field this crate does not model, signed by a peer, stays in the payload.
        v["futureField"] = json!({"x": 1});
        let payload = card_payload(&v).unwrap();
        let protected =
            B64.encode(jcs(&json!({"alg": "EdDSA", "typ": "JOSE", "kid": "peer"})).unwrap());
        let sig = key(3).sign(format!("{protected}.{}", B64.encode(&payload)).as_bytes());
        v["signatures"] =
            json!([{"protected": protected, "signature": B64.encode(sig.to_bytes())}]);
        verify_card(&v, &key(3).verifying_key(), "peer").unwrap();
        v["futureField"]["x"] = json!(2);
        assert!(verify_card(&v, &key(3).verifying_key(), "peer").is_err());
    }

    #[test]
    fn other_algorithms_are_not_accepted() {
        let mut card = build_card(EchoAgent::new().descriptor(), &ctx()).unwrap();
        sign_card(&mut card, &key(7), "node-1").unwrap();
        let mut v = serde_json::to_value(&card).unwrap();
        let none = B64.encode(br#"{"alg":"none","kid":"node-1"}"#);
        v["signatures"][0]["protected"] = json!(none);
        assert!(verify_card(&v, &key(7).verifying_key(), "node-1").is_err());
    }
}
