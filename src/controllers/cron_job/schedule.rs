//! A CronJob's schedule: standard 5-field cron syntax and the `@hourly`-style descriptors
//! (parsed by croner), or `@every <Go duration>` (a fixed delay, as upstream's cron library), evaluated in a time zone (jiff's tz database: the system's, else the
//! bundled copy): `spec.timeZone`, else a legacy `CRON_TZ=` / `TZ=` prefix, else the
//! server's local zone, as upstream's controller does.
//!
//! Also upstream's arithmetic of missed start times (`mostRecentScheduleTime`).

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;

/// Past this many missed start times the controller warns `TooManyMissedTimes`.
pub const MANY_MISSED: i64 = 100;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    timing: Timing,
    zone: TimeZone,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    /// Cron fields or a descriptor.
    Cron(Box<Cron>),
    /// `@every`: this many whole seconds after the previous time (truncated to the second).
    Every(i64),
}

/// Parses a bare schedule expression (no `TZ=` prefix): five fields, a descriptor, or
/// `@every <duration>`.
pub fn parse_cron(expression: &str) -> Result<Timing, String> {
    let expression = expression.trim();
    if let Some(duration) = expression.strip_prefix("@every ") {
        let seconds = go_duration_seconds(duration.trim())
            .map_err(|e| format!("failed to parse duration {expression}: {e}"))?;
        // Upstream's library rounds to whole seconds and never fires faster than 1/s.
        return Ok(Timing::Every(seconds.max(1)));
    }
    let expression = if expression.eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        expression
    };
    let fields = expression.split_whitespace().count();
    if !expression.starts_with('@') && fields != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {fields}: [{expression}]"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map(|cron| Timing::Cron(Box::new(cron)))
        .map_err(|e| e.to_string())
}

/// A Go `time.ParseDuration` text ("1h30m", "90s", "1.5h") in whole seconds, rounded as
/// upstream's cron library does (`Round(time.Second)`).
fn go_duration_seconds(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') || rest.is_empty() {
        return Err(invalid());
    }
    if rest == "0" {
        return Ok(0);
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        nanos += number * scale;
        rest = &rest[unit_len..];
    }
    Ok((nanos / 1e9).round() as i64)
}

/// Loads an IANA time zone by name, as Go's `time.LoadLocation` (with its error text).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

/// Splits a legacy `CRON_TZ=Zone ` / `TZ=Zone ` prefix off a schedule.
pub fn split_zone_prefix(schedule: &str) -> (Option<&str>, &str) {
    let trimmed = schedule.trim_start();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            let (zone, expression) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (Some(zone), expression.trim());
        }
    }
    (None, schedule)
}

impl Schedule {
    /// The schedule of a CronJob: its `schedule` text and `spec.timeZone`.
    pub fn parse(schedule: &str, time_zone_field: Option<&str>) -> Result<Schedule, String> {
        let (prefix, expression) = split_zone_prefix(schedule);
        let zone = match (time_zone_field, prefix) {
            (Some(name), _) | (None, Some(name)) => self::time_zone(name)?,
            (None, None) => TimeZone::system(),
        };
        Ok(Schedule {
            timing: parse_cron(expression)?,
            zone,
        })
    }

    /// The first start time strictly after `after`: on a whole minute for cron fields,
    /// the delay after `after` (truncated to the second) for `@every`.
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.timing {
            Timing::Cron(cron) => {
                let start = after.to_zoned(self.zone.clone());
                cron.find_next_occurrence(&start, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
            Timing::Every(seconds) => Timestamp::from_second(after.as_second() + seconds).ok(),
        }
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }
}

/// Start times due between `earliest` (exclusive) and `now` (inclusive): the latest of them
/// and about how many there are (upstream's rough count, from the first interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub latest: Option<Timestamp>,
    pub missed: i64,
}

/// Upstream's `mostRecentScheduleTime`. Errors on a schedule that never fires twice a
/// second apart (such as February 31st).
pub fn most_recent(
    schedule: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
) -> Result<Due, String> {
    let never = || "no time matches the schedule".to_string();
    let t1 = schedule.next(earliest).ok_or_else(never)?;
    if now < t1 {
        return Ok(Due {
            latest: None,
            missed: 0,
        });
    }
    let t2 = schedule.next(t1).ok_or_else(never)?;
    if now < t2 {
        return Ok(Due {
            latest: Some(t1),
            missed: 1,
        });
    }
    let interval = t2.as_second() - t1.as_second();
    if interval < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let missed = (now.as_second() - t1.as_second()) / interval + 1;
    // Start a little before the estimate and walk forward: schedules are not all regular.
    let from = Timestamp::from_second(t1.as_second() + (missed - 2) * interval).unwrap_or(t1);
    let mut latest = None;
    let mut at = schedule.next(from);
    while let Some(t) = at.filter(|t| *t <= now) {
        latest = Some(t);
        at = schedule.next(t);
    }
    Ok(Due { latest, missed })
}

/// How long from `now` until `t`, never negative.
pub fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis((t.as_millisecond() - now.as_millisecond()).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn every_is_a_fixed_delay_in_whole_seconds() {
        let every = Schedule::parse("@every 1h30m", Some("UTC")).unwrap();
        assert_eq!(
            every.next(at("2026-01-01T10:15:30.7Z")),
            Some(at("2026-01-01T11:45:30Z"))
        );
        let fast = Schedule::parse("@every 200ms", Some("UTC")).unwrap();
        assert_eq!(
            fast.next(at("2026-01-01T10:15:30Z")),
            Some(at("2026-01-01T10:15:31Z"))
        );
        assert_eq!(go_duration_seconds("1.5m"), Ok(90));
        for bad in ["", "5", "-1m", "1d", "m"] {
            assert!(go_duration_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn five_fields_and_descriptors() {
        let hourly = Schedule::parse("@hourly", Some("UTC")).unwrap();
        assert_eq!(
            hourly.next(at("2026-01-01T10:15:30Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        let midnight = Schedule::parse("@midnight", Some("UTC")).unwrap();
        assert_eq!(
            midnight.next(at("2026-01-01T10:15:30Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        let every5 = Schedule::parse("*/5 * * * *", Some("UTC")).unwrap();
        assert_eq!(
            every5.next(at("2026-01-01T10:15:00Z")),
            Some(at("2026-01-01T10:20:00Z"))
        );
        assert_eq!(
            every5.next(at("2026-01-01T10:17:59.5Z")),
            Some(at("2026-01-01T10:20:00Z"))
        );
        // Day of month restricted, day of week `*`: only the 1st (no OR with "every day").
        let monthly = Schedule::parse("0 0 1 * *", Some("UTC")).unwrap();
        assert_eq!(
            monthly.next(at("2026-01-05T00:00:00Z")),
            Some(at("2026-02-01T00:00:00Z"))
        );
        // Both restricted: either matches, as cron and upstream do.
        let either = Schedule::parse("0 0 13 * FRI", Some("UTC")).unwrap();
        assert_eq!(
            either.next(at("2026-02-01T00:00:00Z")),
            Some(at("2026-02-06T00:00:00Z"))
        );
        assert!(parse_cron("* * * *")
            .unwrap_err()
            .contains("expected exactly 5 fields"));
        assert!(parse_cron("0 0 * * * *").is_err());
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("foo").is_err());
    }

    #[test]
    fn time_zones_from_the_field_or_a_legacy_prefix() {
        let field = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC, in summer 07:00 UTC.
        assert_eq!(
            field.next(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            field.next(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T07:00:00Z"))
        );
        let prefixed = Schedule::parse("CRON_TZ=America/New_York 30 6 * * *", None).unwrap();
        assert_eq!(
            prefixed.next(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T11:30:00Z"))
        );
        let tz = Schedule::parse("TZ=Asia/Tokyo 0 0 * * *", None).unwrap();
        assert_eq!(
            tz.next(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-10T15:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err(),
            "unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn missed_start_times() {
        let hourly = Schedule::parse("0 * * * *", Some("UTC")).unwrap();
        let created = at("2026-01-01T10:30:00Z");
        let due = |now| most_recent(&hourly, created, at(now)).unwrap();
        assert_eq!(
            due("2026-01-01T10:59:00Z"),
            Due {
                latest: None,
                missed: 0
            }
        );
        assert_eq!(
            due("2026-01-01T11:00:00Z"),
            Due {
                latest: Some(at("2026-01-01T11:00:00Z")),
                missed: 1
            }
        );
        assert_eq!(
            due("2026-01-01T13:20:00Z"),
            Due {
                latest: Some(at("2026-01-01T13:00:00Z")),
                missed: 3
            }
        );
        let late = due("2026-01-07T00:00:00Z");
        assert_eq!(late.latest, Some(at("2026-01-07T00:00:00Z")));
        assert!(late.missed > MANY_MISSED);
        let never = Schedule::parse("0 0 31 2 *", Some("UTC")).unwrap();
        assert!(most_recent(&never, created, at("2027-01-01T00:00:00Z")).is_err());
    }
}
