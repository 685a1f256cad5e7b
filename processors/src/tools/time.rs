//! `current_time`: the date and time now, in the user's zone or any other.

use async_trait::async_trait;
use chrono::{Offset, Utc};
use chrono_tz::Tz;
use serde_json::json;

use super::{Tool, ToolError, ToolSpec, args_object, text_arg};

/// Cities a model is likely to name whose IANA zone is named after another city (IANA names
/// one city per zone); cities that are zone names themselves (Tokyo, Paris) are found directly.
const CITY_ZONES: &[(&str, &str)] = &[
    ("san francisco", "America/Los_Angeles"),
    ("seattle", "America/Los_Angeles"),
    ("las vegas", "America/Los_Angeles"),
    ("san diego", "America/Los_Angeles"),
    ("washington", "America/New_York"),
    ("boston", "America/New_York"),
    ("miami", "America/New_York"),
    ("atlanta", "America/New_York"),
    ("philadelphia", "America/New_York"),
    ("dallas", "America/Chicago"),
    ("houston", "America/Chicago"),
    ("austin", "America/Chicago"),
    ("san antonio", "America/Chicago"),
    ("salt lake city", "America/Denver"),
    ("montreal", "America/Toronto"),
    ("ottawa", "America/Toronto"),
    ("rio de janeiro", "America/Sao_Paulo"),
    ("beijing", "Asia/Shanghai"),
    ("shenzhen", "Asia/Shanghai"),
    ("guangzhou", "Asia/Shanghai"),
    ("mumbai", "Asia/Kolkata"),
    ("bombay", "Asia/Kolkata"),
    ("delhi", "Asia/Kolkata"),
    ("new delhi", "Asia/Kolkata"),
    ("bangalore", "Asia/Kolkata"),
    ("bengaluru", "Asia/Kolkata"),
    ("kyoto", "Asia/Tokyo"),
    ("osaka", "Asia/Tokyo"),
    ("hanoi", "Asia/Bangkok"),
    ("ho chi minh city", "Asia/Ho_Chi_Minh"),
    ("saigon", "Asia/Ho_Chi_Minh"),
    ("abu dhabi", "Asia/Dubai"),
    ("tel aviv", "Asia/Jerusalem"),
    ("munich", "Europe/Berlin"),
    ("frankfurt", "Europe/Berlin"),
    ("hamburg", "Europe/Berlin"),
    ("barcelona", "Europe/Madrid"),
    ("milan", "Europe/Rome"),
    ("venice", "Europe/Rome"),
    ("florence", "Europe/Rome"),
    ("geneva", "Europe/Zurich"),
    ("st petersburg", "Europe/Moscow"),
    ("saint petersburg", "Europe/Moscow"),
    ("edinburgh", "Europe/London"),
    ("manchester", "Europe/London"),
    ("cape town", "Africa/Johannesburg"),
    ("canberra", "Australia/Sydney"),
    ("wellington", "Pacific/Auckland"),
    ("honolulu", "Pacific/Honolulu"),
    ("hawaii", "Pacific/Honolulu"),
];

/// The zone a model's `timezone` argument means: an IANA name in any case, a city (the last
/// part of an IANA name, spaces for underscores, or a well-known city of a zone), or an
/// abbreviation chrono-tz knows (`UTC`, `EST`).
pub fn resolve_zone(name: &str) -> Option<Tz> {
    let name = name.trim();
    if let Ok(tz) = name.parse::<Tz>() {
        return Some(tz);
    }
    if let Some(tz) = chrono_tz::TZ_VARIANTS.iter().copied().find(|tz| tz.name().eq_ignore_ascii_case(name)) {
        return Some(tz);
    }
    // "Tokyo, Japan" → "tokyo"; "New York City" → "new york" below.
    let city = name.split(',').next().unwrap_or(name).trim().to_lowercase().replace(['_', '-'], " ");
    let city = city.strip_suffix(" city").filter(|c| !c.is_empty()).unwrap_or(&city).to_string();
    if let Some((_, zone)) = CITY_ZONES.iter().find(|(c, _)| *c == city) {
        return zone.parse().ok();
    }
    chrono_tz::TZ_VARIANTS.iter().copied().find(|tz| {
        let last = tz.name().rsplit('/').next().unwrap_or_default();
        last.replace('_', " ").eq_ignore_ascii_case(&city)
    })
}

/// The system's own zone, when it has an IANA name.
fn local_zone() -> Option<Tz> {
    iana_time_zone::get_timezone().ok()?.parse().ok()
}

/// The `current_time` tool.
pub struct CurrentTime {
    /// The zone used when the model names none; `None`: the system's own.
    default: Option<Tz>,
}

impl CurrentTime {
    /// `zone` is an IANA name, or empty for the system's zone (checked by `ToolsSettings::check`).
    pub fn new(zone: &str) -> Self {
        Self { default: if zone.is_empty() { None } else { zone.parse().ok() } }
    }
}

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "current_time".into(),
            description: "Get the current date and time, here or in another time zone or city. Use it for any \
                          question about the time, the date or the day of the week."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "An IANA time zone such as \"Europe/Paris\", or a city such as \"Paris\"; omit for the user's own time zone"
                    }
                }
            }),
            source: "builtin".into(),
        }
    }

    async fn call(&self, args: serde_json::Value) -> Result<String, ToolError> {
        let args = args_object(args)?;
        let asked = text_arg(&args, &["timezone", "time_zone", "tz", "zone", "city", "location", "place"]);
        let now = Utc::now();
        let (label, zone) = match asked {
            Some(name) => match resolve_zone(&name) {
                Some(tz) => (tz.name().to_string(), Some(tz)),
                None => {
                    return Err(ToolError::BadArguments(format!(
                        "unknown time zone or city `{name}`: give an IANA zone such as \"America/New_York\""
                    )));
                }
            },
            None => match self.default.or_else(local_zone) {
                Some(tz) => (format!("{} (the user's time zone)", tz.name()), Some(tz)),
                None => ("the user's time zone".to_string(), None),
            },
        };
        Ok(match zone {
            Some(tz) => {
                let t = now.with_timezone(&tz);
                let offset = t.offset().fix();
                format!("{} {} (UTC{offset}) in {label}", t.format("%A %-d %B %Y, %H:%M"), t.format("%Z"))
            }
            None => {
                let t = now.with_timezone(&chrono::Local);
                format!("{} (UTC{}) in {label}", t.format("%A %-d %B %Y, %H:%M"), t.offset())
            }
        })
    }
}
