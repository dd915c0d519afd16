//! Agent discovery objects (`AgentCard` and what it holds, spec §4.4 and §4.5).
//!
//! Field presence follows the proto: `optional` fields are `Option` (an explicit `false` stays
//! on the wire, as JCS signing needs, §8.4.1), repeated fields that are not REQUIRED are left out
//! when empty, REQUIRED ones are always written. Maps are `BTreeMap`s so a card serializes to
//! the same bytes every time (stable `ETag`s).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::Metadata;

/// The A2A protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "1.0";
/// `protocolBinding` of the JSON-RPC 2.0 binding.
pub const BINDING_JSONRPC: &str = "JSONRPC";
/// `protocolBinding` of the HTTP+JSON (REST) binding.
pub const BINDING_HTTP_JSON: &str = "HTTP+JSON";

/// A self-describing manifest of an agent (`AgentCard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCard {
    /// Human-readable name.
    pub name: String,
    /// What the agent does.
    pub description: String,
    /// Interfaces, preferred first.
    pub supported_interfaces: Vec<AgentInterface>,
    /// Who runs the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AgentProvider>,
    /// Version of the agent.
    pub version: String,
    /// Documentation URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documentation_url: Option<String>,
    /// Optional capabilities.
    pub capabilities: AgentCapabilities,
    /// Security schemes by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_schemes: BTreeMap<String, SecurityScheme>,
    /// Requirements (any one of the list satisfies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_requirements: Vec<SecurityRequirement>,
    /// Accepted input media types.
    pub default_input_modes: Vec<String>,
    /// Produced output media types.
    pub default_output_modes: Vec<String>,
    /// Skills.
    pub skills: Vec<AgentSkill>,
    /// JWS signatures over the JCS form of the card without this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<AgentCardSignature>,
    /// Icon URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

/// Where and how the agent is reached (`AgentInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInterface {
    /// Absolute URL.
    pub url: String,
    /// `JSONRPC`, `HTTP+JSON`, `GRPC` or a URI.
    pub protocol_binding: String,
    /// Routing tenant, echoed by clients in requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `1.0`.
    pub protocol_version: String,
}

/// The provider of an agent (`AgentProvider`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentProvider {
    /// Provider URL.
    pub url: String,
    /// Organization name.
    pub organization: String,
}

/// Optional capabilities (`AgentCapabilities`); unset and `false` are different on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCapabilities {
    /// `SendStreamingMessage` and `SubscribeToTask` are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Push notification configs are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_notifications: Option<bool>,
    /// Protocol extensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<AgentExtension>,
    /// `GetExtendedAgentCard` is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_agent_card: Option<bool>,
}

/// A protocol extension the agent supports (`AgentExtension`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentExtension {
    /// Extension URI.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// How the agent uses it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Clients must support it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Extension parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Metadata>,
}

/// One ability of an agent (`AgentSkill`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSkill {
    /// Skill id (the value of `metadata.skill`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// What it does and how to call it.
    pub description: String,
    /// Keywords.
    pub tags: Vec<String>,
    /// Example prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    /// Input media types, overriding the card's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_modes: Vec<String>,
    /// Output media types, overriding the card's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_modes: Vec<String>,
    /// Security requirements of this skill.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_requirements: Vec<SecurityRequirement>,
}

/// A JWS over the card (`AgentCardSignature`, RFC 7515 JSON serialization).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCardSignature {
    /// Base64url of the protected header JSON.
    pub protected: String,
    /// Base64url of the signature.
    pub signature: String,
    /// Unprotected header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Metadata>,
}

/// Scopes by scheme name (`SecurityRequirement`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityRequirement {
    /// Scheme name → required scopes.
    #[serde(default)]
    pub schemes: BTreeMap<String, StringList>,
}

/// `StringList`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringList {
    /// The strings.
    #[serde(default)]
    pub list: Vec<String>,
}

proto_oneof! {
    /// A security scheme (`SecurityScheme`, the OpenAPI 3.2 Security Scheme Object as a oneof).
    SecurityScheme {
        /// API key.
        ApiKey(ApiKeySecurityScheme) => "apiKeySecurityScheme",
        /// HTTP authentication (Bearer, Basic).
        HttpAuth(HttpAuthSecurityScheme) => "httpAuthSecurityScheme",
        /// OAuth 2.0.
        OAuth2(OAuth2SecurityScheme) => "oauth2SecurityScheme",
        /// OpenID Connect.
        OpenIdConnect(OpenIdConnectSecurityScheme) => "openIdConnectSecurityScheme",
        /// Mutual TLS.
        MutualTls(MutualTlsSecurityScheme) => "mtlsSecurityScheme",
    }
}

/// `APIKeySecurityScheme`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecurityScheme {
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `query`, `header` or `cookie`.
    pub location: String,
    /// Parameter name.
    pub name: String,
}

/// `HTTPAuthSecurityScheme`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpAuthSecurityScheme {
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `Bearer`, `Basic`...
    pub scheme: String,
    /// Token format hint (`JWT`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bearer_format: String,
}

/// `OAuth2SecurityScheme`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2SecurityScheme {
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The flows.
    pub flows: OAuthFlows,
    /// RFC 8414 metadata URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oauth2_metadata_url: String,
}

/// `OpenIdConnectSecurityScheme`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenIdConnectSecurityScheme {
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// OIDC discovery URL.
    pub open_id_connect_url: String,
}

/// `MutualTlsSecurityScheme`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutualTlsSecurityScheme {
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

proto_oneof! {
    /// Supported OAuth 2.0 flows (`OAuthFlows`, a oneof).
    OAuthFlows {
        /// Authorization code (+PKCE).
        AuthorizationCode(OAuthFlow) => "authorizationCode",
        /// Client credentials.
        ClientCredentials(OAuthFlow) => "clientCredentials",
        /// Deprecated implicit flow.
        Implicit(OAuthFlow) => "implicit",
        /// Deprecated password flow.
        Password(OAuthFlow) => "password",
        /// Device code (RFC 8628).
        DeviceCode(OAuthFlow) => "deviceCode",
    }
}

/// The fields of the OAuth flow messages (each flow uses its subset; unused ones stay empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthFlow {
    /// Authorization URL (authorization code, implicit).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authorization_url: String,
    /// Device authorization URL (device code).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_authorization_url: String,
    /// Token URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_url: String,
    /// Refresh URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refresh_url: String,
    /// Scopes and their descriptions.
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
    /// PKCE required (authorization code).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pkce_required: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// The sample card of spec §8.5, copied by hand.
    pub(crate) fn spec_sample_card() -> serde_json::Value {
        json!({
          "name": "GeoSpatial Route Planner Agent",
          "description": "Provides advanced route planning, traffic analysis, and custom map generation services. This agent can calculate optimal routes, estimate travel times considering real-time traffic, and create personalized maps with points of interest.",
          "supportedInterfaces": [
            {"url": "https://georoute-agent.example.com/a2a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": "https://georoute-agent.example.com/a2a/grpc", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            {"url": "https://georoute-agent.example.com/a2a/json", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"}
          ],
          "provider": {"organization": "Example Geo Services Inc.", "url": "https://www.examplegeoservices.com"},
          "iconUrl": "https://georoute-agent.example.com/icon.png",
          "version": "1.2.0",
          "documentationUrl": "https://docs.examplegeoservices.com/georoute-agent/api",
          "capabilities": {"streaming": true, "pushNotifications": true, "extendedAgentCard": true},
          "securitySchemes": {
            "google": {"openIdConnectSecurityScheme": {"openIdConnectUrl": "https://accounts.google.com/.well-known/openid-configuration"}}
          },
          "securityRequirements": [{"schemes": {"google": {"list": ["openid", "profile", "email"]}}}],
          "defaultInputModes": ["application/json", "text/plain"],
          "defaultOutputModes": ["application/json", "image/png"],
          "skills": [
            {
              "id": "route-optimizer-traffic",
              "name": "Traffic-Aware Route Optimizer",
              "description": "Calculates the optimal driving route between two or more locations, taking into account real-time traffic conditions, road closures, and user preferences (e.g., avoid tolls, prefer highways).",
              "tags": ["maps", "routing", "navigation", "directions", "traffic"],
              "examples": [
                "Plan a route from '1600 Amphitheatre Parkway, Mountain View, CA' to 'San Francisco International Airport' avoiding tolls.",
                "{\"origin\": {\"lat\": 37.422, \"lng\": -122.084}, \"destination\": {\"lat\": 37.7749, \"lng\": -122.4194}, \"preferences\": [\"avoid_ferries\"]}"
              ],
              "inputModes": ["application/json", "text/plain"],
              "outputModes": ["application/json", "application/vnd.geo+json", "text/html"]
            },
            {
              "id": "custom-map-generator",
              "name": "Personalized Map Generator",
              "description": "Creates custom map images or interactive map views based on user-defined points of interest, routes, and style preferences. Can overlay data layers.",
              "tags": ["maps", "customization", "visualization", "cartography"],
              "examples": [
                "Generate a map of my upcoming road trip with all planned stops highlighted.",
                "Show me a map visualizing all coffee shops within a 1-mile radius of my current location."
              ],
              "inputModes": ["application/json"],
              "outputModes": ["image/png", "image/jpeg", "application/json", "text/html"]
            }
          ],
          "signatures": [{
            "protected": "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpPU0UiLCJraWQiOiJrZXktMSIsImprdSI6Imh0dHBzOi8vZXhhbXBsZS5jb20vYWdlbnQvandrcy5qc29uIn0",
            "signature": "QFdkNLNszlGj3z3u0YQGt_T9LixY3qtdQpZmsTdDHDe3fXV9y9-B3m2-XgCpzuhiLt8E0tV6HXoZKHv4GtHgKQ"
          }]
        })
    }

    #[test]
    fn spec_sample_card_round_trips() {
        let v = spec_sample_card();
        let card: AgentCard = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(card.capabilities.streaming, Some(true));
        assert!(matches!(
            card.security_schemes.get("google"),
            Some(SecurityScheme::OpenIdConnect(_))
        ));
        assert_eq!(
            card.security_requirements[0].schemes["google"].list,
            ["openid", "profile", "email"]
        );
        assert_eq!(serde_json::to_value(&card).unwrap(), v);
    }

    #[test]
    fn capabilities_keep_explicit_false_and_drop_unset() {
        let caps: AgentCapabilities = serde_json::from_value(json!({"streaming": false})).unwrap();
        assert_eq!(caps.streaming, Some(false));
        assert_eq!(caps.push_notifications, None);
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            json!({"streaming": false})
        );
    }

    #[test]
    fn required_card_fields_are_required() {
        let mut v = spec_sample_card();
        v.as_object_mut().unwrap().remove("description");
        assert!(serde_json::from_value::<AgentCard>(v).is_err());
        let mut v = spec_sample_card();
        v.as_object_mut().unwrap().remove("defaultInputModes");
        assert!(serde_json::from_value::<AgentCard>(v).is_err());
    }

    #[test]
    fn security_schemes_and_flows() {
        let v = json!({
            "bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer", "bearerFormat": "JWT"}},
            "oauth": {"oauth2SecurityScheme": {"flows": {"clientCredentials": {
                "tokenUrl": "https://idp.example/token", "scopes": {"a2a": "call agents"}}}}}
        });
        let schemes: BTreeMap<String, SecurityScheme> = serde_json::from_value(v.clone()).unwrap();
        assert!(
            matches!(&schemes["oauth"], SecurityScheme::OAuth2(o) if matches!(o.flows, OAuthFlows::ClientCredentials(_)))
        );
        assert_eq!(serde_json::to_value(&schemes).unwrap(), v);
        let two = json!({"httpAuthSecurityScheme": {"scheme": "Bearer"}, "mtlsSecurityScheme": {}});
        assert!(serde_json::from_value::<SecurityScheme>(two).is_err());
    }
}
