//! `calculate`: arithmetic the model should not do in its head.
//!
//! exmex parses numbers, operators (`+ - * / ^ %`), parentheses and math functions (`sqrt`,
//! `sin`, `ln`, ...) and nothing else: no variables, no assignment, no code, so whatever the
//! model writes can only compute a number or fail.

use async_trait::async_trait;
use serde_json::json;

use super::{Tool, ToolError, ToolSpec, args_object, text_arg};

/// Longer input is refused: deep nesting would take the parser's stack with it.
const MAX_LEN: usize = 500;

fn thousands() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"(\d),(\d{3})\b").expect("a valid regex"))
}

fn percent_of() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"(\d+(?:\.\d+)?)\s*%\s*of\b").expect("a valid regex"))
}

fn percent() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"(\d+(?:\.\d+)?)\s*%").expect("a valid regex"))
}

/// The `calculate` tool.
pub struct Calculator;

/// Evaluates `expression`; the error says what was wrong, for the model.
pub fn evaluate(expression: &str) -> Result<String, String> {
    if expression.len() > MAX_LEN {
        return Err(format!("the expression is longer than {MAX_LEN} characters"));
    }
    if expression.chars().filter(|c| *c == '(').count() > 50 {
        return Err("the expression nests too deeply".into());
    }
    // What people and models write for the operators exmex spells otherwise.
    let normalized =
        expression.replace(['×', '·'], "*").replace('÷', "/").replace('−', "-").replace("**", "^").replace('_', "");
    // Thousands separators ("1,234 * 5,678"): exmex would read the comma as an argument separator.
    let normalized = thousands().replace_all(&normalized, "$1$2").into_owned();
    let normalized = thousands().replace_all(&normalized, "$1$2");
    // Percentages, as people ask for them: "15% of 80", "80 * 15%".
    let normalized = percent_of().replace_all(&normalized, "($1/100)*");
    let normalized = percent().replace_all(&normalized, "($1/100)");
    let value = exmex::eval_str::<f64>(normalized.trim())
        .map_err(|e| format!("cannot evaluate `{expression}`: {}", e.msg()))?;
    if !value.is_finite() {
        return Err(format!("`{expression}` has no finite value (division by zero?)"));
    }
    Ok(format_number(value))
}

/// Whole numbers without a fraction (`7006652`, not `7006652.0`), others with up to 10
/// significant digits, so the spoken answer is short.
fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let digits = 10 - (value.abs().log10().floor() as i32 + 1);
    if (0..=17).contains(&digits) {
        let text = format!("{value:.prec$}", prec = digits as usize);
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return text.to_string();
    }
    format!("{value:e}")
}

#[async_trait]
impl Tool for Calculator {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "calculate".into(),
            description: "Evaluate an arithmetic expression exactly. Use it for any calculation instead of \
                          computing in your head."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The expression, e.g. \"(3 + 4) * 2\" or \"sqrt(2) / 3\"; operators + - * / ^, percentages, and functions sqrt, sin, cos, tan, ln, log, exp, abs"
                    }
                },
                "required": ["expression"]
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let expression = text_arg(&args, &["expression", "expr", "input", "query", "calculation"])
            .ok_or_else(|| ToolError::BadArguments("`expression` is missing".into()))?;
        evaluate(&expression).map(|v| format!("{expression} = {v}")).map_err(ToolError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_people_say_them() {
        assert_eq!(format_number(7006652.0), "7006652");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(2.0f64.sqrt()), "1.414213562");
        assert_eq!(format_number(-2.5), "-2.5");
    }

    #[test]
    fn percentages_are_fractions() {
        assert_eq!(evaluate("15% of 80").unwrap(), "12");
        assert_eq!(evaluate("15% * 80").unwrap(), "12");
        assert_eq!(evaluate("200 + 10%").unwrap(), "200.1");
    }
}
