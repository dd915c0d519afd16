//! Skill selection: A2A messages carry no skill id, so the node's convention is
//!
//! - `metadata.skill` (a string) names a skill id from the agent's card;
//! - without it the agent's default skill runs, or the task turns INPUT_REQUIRED with a
//!   message listing the skills (the next message picks one);
//! - structured arguments travel in `data` parts holding JSON objects (merged; a key given
//!   twice is refused), plain text parts are the main input (joined by newlines), file parts
//!   (`raw`, `url`) are passed through;
//! - a continuing task keeps the skill it started with.

use serde_json::Value;

use crate::card::AgentSkill;
use crate::error::A2aError;
use crate::types::{Message, Metadata, Part, PartContent};

/// The sentence appended to every skill description on the cards.
pub const CONVENTION: &str = "Select this skill with metadata.skill = \"{id}\"; plain text parts are the main input, \
                              structured arguments go in a data part holding a JSON object.";

/// The input of a turn, split by the convention.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillCall {
    /// The selected skill id.
    pub skill: String,
    /// Text parts joined by newlines.
    pub text: String,
    /// Arguments from the data parts.
    pub args: Metadata,
    /// File parts (`raw`, `url`).
    pub files: Vec<Part>,
}

/// Outcome of the selection.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Run this skill.
    Run(SkillCall),
    /// Ask the client: the text says what is needed.
    NeedsInput(String),
}

/// Picks the skill of a turn. `current` is the skill the task already runs (continuation).
pub fn select(
    skills: &[AgentSkill],
    default_skill: Option<&str>,
    current: Option<&str>,
    message: &Message,
) -> Result<Selection, A2aError> {
    let requested = match message.metadata.as_ref().and_then(|m| m.get("skill")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(A2aError::invalid_field(
                "message.metadata.skill",
                "must be a skill id string",
            ));
        }
    };
    if let Some(id) = requested
        && !skills.iter().any(|s| s.id == id)
    {
        let known: Vec<&str> = skills.iter().map(|s| s.id.as_str()).collect();
        return Err(A2aError::invalid_field(
            "message.metadata.skill",
            &format!(
                "unknown skill '{id}'; this agent offers: {}",
                known.join(", ")
            ),
        ));
    }
    let skill = match (current, requested) {
        (Some(cur), Some(req)) if cur != req => {
            return Err(A2aError::invalid_field(
                "message.metadata.skill",
                &format!("this task runs skill '{cur}', not '{req}'"),
            ));
        }
        (Some(cur), _) => cur,
        (None, Some(req)) => req,
        (None, None) => match default_skill {
            Some(d) => d,
            None => {
                let list: Vec<String> = skills
                    .iter()
                    .map(|s| format!("{} ({})", s.id, s.name))
                    .collect();
                return Ok(Selection::NeedsInput(format!(
                    "Which skill should run? Set metadata.skill to one of: {}.",
                    list.join(", ")
                )));
            }
        },
    };
    let mut texts = Vec::new();
    let mut args = Metadata::new();
    let mut files = Vec::new();
    for (i, part) in message.parts.iter().enumerate() {
        match &part.content {
            PartContent::Text(t) => texts.push(t.as_str()),
            PartContent::Data(Value::Object(obj)) => {
                for (k, v) in obj {
                    if args.insert(k.clone(), v.clone()).is_some() {
                        return Err(A2aError::invalid_field(
                            &format!("message.parts[{i}].data"),
                            &format!("argument '{k}' is given twice"),
                        ));
                    }
                }
            }
            PartContent::Data(_) => {
                return Err(A2aError::invalid_field(
                    &format!("message.parts[{i}].data"),
                    "arguments must be a JSON object",
                ));
            }
            PartContent::Raw(_) | PartContent::Url(_) => files.push(part.clone()),
        }
    }
    Ok(Selection::Run(SkillCall {
        skill: skill.to_owned(),
        text: texts.join("\n"),
        args,
        files,
    }))
}

/// True when `media_type` is accepted by one of `modes` (`type/subtype`, `type/*`, `*/*`;
/// parameters such as `;charset=utf-8` are ignored, case-insensitive).
pub fn mode_accepts(modes: &[String], media_type: &str) -> bool {
    let essence = |m: &str| {
        m.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let wanted = essence(media_type);
    let wanted_type = wanted.split('/').next().unwrap_or("").to_owned();
    modes.iter().any(|mode| {
        let mode = essence(mode);
        mode == "*/*" || mode == wanted || mode.strip_suffix("/*").is_some_and(|t| t == wanted_type)
    })
}

/// Refuses a message with a part whose media type the skill (or the card default) does not
/// accept: `ContentTypeNotSupported`.
pub fn check_input_modes(input_modes: &[String], message: &Message) -> Result<(), A2aError> {
    if input_modes.is_empty() {
        return Ok(());
    }
    for part in &message.parts {
        let media_type = part.effective_media_type();
        if !mode_accepts(input_modes, media_type) {
            return Err(A2aError::ContentTypeNotSupported {
                media_type: media_type.to_owned(),
                accepted: input_modes.join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Role;
    use serde_json::json;

    fn skills() -> Vec<AgentSkill> {
        ["translate", "detect"]
            .iter()
            .map(|id| AgentSkill {
                id: (*id).into(),
                name: format!("{id} name"),
                description: "d".into(),
                tags: vec![],
                examples: vec![],
                input_modes: vec![],
                output_modes: vec![],
                security_requirements: vec![],
            })
            .collect()
    }

    fn msg(parts: Vec<Part>, skill: Option<Value>) -> Message {
        let mut m = Message::new(Role::User, "m", parts);
        if let Some(s) = skill {
            m.metadata = Some(json!({"skill": s}).as_object().unwrap().clone());
        }
        m
    }

    #[test]
    fn metadata_skill_picks_and_splits_input() {
        let m = msg(
            vec![
                Part::text("Hello"),
                Part::data(json!({"source": "en", "target": "pt"})),
                Part::text("world"),
                Part::url("https://f"),
            ],
            Some(json!("translate")),
        );
        let Selection::Run(call) = select(&skills(), Some("detect"), None, &m).unwrap() else {
            panic!()
        };
        assert_eq!(call.skill, "translate");
        assert_eq!(call.text, "Hello\nworld");
        assert_eq!(
            Value::Object(call.args),
            json!({"source": "en", "target": "pt"})
        );
        assert_eq!(call.files.len(), 1);
    }

    #[test]
    fn default_skill_or_input_required() {
        let m = msg(vec![Part::text("x")], None);
        let Selection::Run(call) = select(&skills(), Some("detect"), None, &m).unwrap() else {
            panic!()
        };
        assert_eq!(call.skill, "detect");
        let Selection::NeedsInput(text) = select(&skills(), None, None, &m).unwrap() else {
            panic!()
        };
        assert!(
            text.contains("metadata.skill")
                && text.contains("translate (translate name)")
                && text.contains("detect"),
            "{text}"
        );
    }

    #[test]
    fn unknown_or_malformed_skill_is_invalid_params() {
        let err = select(
            &skills(),
            None,
            None,
            &msg(vec![Part::text("x")], Some(json!("fly"))),
        )
        .unwrap_err();
        assert_eq!(err.jsonrpc_code(), -32602);
        assert!(
            err.to_string()
                .contains("unknown skill 'fly'; this agent offers: translate, detect"),
            "{err}"
        );
        assert!(
            select(
                &skills(),
                None,
                None,
                &msg(vec![Part::text("x")], Some(json!(3)))
            )
            .is_err()
        );
    }

    #[test]
    fn a_continuing_task_keeps_its_skill() {
        let m = msg(vec![Part::text("x")], None);
        let Selection::Run(call) = select(&skills(), None, Some("translate"), &m).unwrap() else {
            panic!()
        };
        assert_eq!(call.skill, "translate");
        let same = msg(vec![Part::text("x")], Some(json!("translate")));
        assert!(select(&skills(), None, Some("translate"), &same).is_ok());
        let other = msg(vec![Part::text("x")], Some(json!("detect")));
        assert!(
            select(&skills(), None, Some("translate"), &other)
                .unwrap_err()
                .to_string()
                .contains("runs skill 'translate'")
        );
    }

    #[test]
    fn data_arguments_must_be_objects_without_repeats() {
        let m = msg(vec![Part::data(json!([1, 2]))], Some(json!("translate")));
        assert!(
            select(&skills(), None, None, &m)
                .unwrap_err()
                .to_string()
                .contains("parts[0].data")
        );
        let m = msg(
            vec![Part::data(json!({"a": 1})), Part::data(json!({"a": 2}))],
            Some(json!("translate")),
        );
        assert!(
            select(&skills(), None, None, &m)
                .unwrap_err()
                .to_string()
                .contains("'a' is given twice")
        );
    }

    #[test]
    fn input_modes_are_checked_per_part() {
        let modes = vec![
            "text/plain".to_string(),
            "application/json".to_string(),
            "image/*".to_string(),
        ];
        let ok = msg(
            vec![
                Part::text("x"),
                Part::data(json!({})),
                Part::raw(vec![1]).with_media_type("image/PNG"),
            ],
            None,
        );
        check_input_modes(&modes, &ok).unwrap();
        let m = msg(
            vec![Part::raw(vec![1]).with_media_type("application/pdf")],
            None,
        );
        let err = check_input_modes(&modes, &m).unwrap_err();
        assert_eq!(err.jsonrpc_code(), -32005);
        assert!(err.to_string().contains("application/pdf"));
        assert!(
            check_input_modes(&modes, &msg(vec![Part::raw(vec![1])], None)).is_err(),
            "untyped files are octet-stream"
        );
        assert!(mode_accepts(&["*/*".into()], "anything/else"));
        assert!(mode_accepts(
            &["text/plain".into()],
            "text/plain; charset=utf-8"
        ));
        check_input_modes(&[], &m).unwrap();
    }
}
