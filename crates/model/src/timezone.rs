//! Civil dates, ISO 8601 date-times and the Windows time-zone names Azure Monitor autoscale uses
//! (`recurrence.schedule.timeZone`, `fixedDate.timeZone`). Pure: no clock, no tz database.
//!
//! Supported zone names (case-insensitive):
//! - `UTC`, `Coordinated Universal Time` and fixed offsets `UTC+hh`, `UTC-hh`, `UTC+hh:mm`
//!   (Windows' own `UTC-11`, `UTC+12`, ... are of this form);
//! - Windows names whose zone has one offset all year ([`ZONES`] with [`Dst::None`]);
//! - Windows names that follow the US daylight-saving rule (second Sunday of March 02:00 local
//!   to first Sunday of November 02:00 local, since 2007) or the EU rule (last Sunday of March
//!   to last Sunday of October, 01:00 UTC, since 1996).
//!
//! Other names (southern-hemisphere and other national DST rules: AUS Eastern, New Zealand,
//! Israel, Egypt, Mexico's, Chile's, ...) are refused by the parser rather than evaluated with a
//! wrong offset.

/// Daylight-saving rule of a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    None,
    /// United States and Canada.
    Us,
    /// European Union (and the UK).
    Eu,
}

/// A named zone: the name as the user wrote it, its standard offset and DST rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZone {
    pub name: String,
    /// Standard (winter) offset from UTC, seconds east.
    pub std_offset: i64,
    pub dst: Dst,
}

/// Windows zone names with their standard offset (minutes east of UTC) and DST rule.
pub const ZONES: &[(&str, i64, Dst)] = &[
    ("Dateline Standard Time", -720, Dst::None),
    ("Aleutian Standard Time", -600, Dst::Us),
    ("Hawaiian Standard Time", -600, Dst::None),
    ("Marquesas Standard Time", -570, Dst::None),
    ("Alaskan Standard Time", -540, Dst::Us),
    ("Pacific Standard Time", -480, Dst::Us),
    ("US Mountain Standard Time", -420, Dst::None),
    ("Mountain Standard Time", -420, Dst::Us),
    ("Central America Standard Time", -360, Dst::None),
    ("Central Standard Time", -360, Dst::Us),
    ("Canada Central Standard Time", -360, Dst::None),
    ("SA Pacific Standard Time", -300, Dst::None),
    ("Eastern Standard Time", -300, Dst::Us),
    ("Atlantic Standard Time", -240, Dst::Us),
    ("Venezuela Standard Time", -240, Dst::None),
    ("SA Western Standard Time", -240, Dst::None),
    ("Newfoundland Standard Time", -210, Dst::Us),
    ("E. South America Standard Time", -180, Dst::None),
    ("SA Eastern Standard Time", -180, Dst::None),
    ("Argentina Standard Time", -180, Dst::None),
    ("Montevideo Standard Time", -180, Dst::None),
    ("Bahia Standard Time", -180, Dst::None),
    ("Tocantins Standard Time", -180, Dst::None),
    ("Azores Standard Time", -60, Dst::Eu),
    ("Cape Verde Standard Time", -60, Dst::None),
    ("Cabo Verde Standard Time", -60, Dst::None),
    ("GMT Standard Time", 0, Dst::Eu),
    ("Greenwich Standard Time", 0, Dst::None),
    ("W. Europe Standard Time", 60, Dst::Eu),
    ("Central Europe Standard Time", 60, Dst::Eu),
    ("Romance Standard Time", 60, Dst::Eu),
    ("Central European Standard Time", 60, Dst::Eu),
    ("W. Central Africa Standard Time", 60, Dst::None),
    ("GTB Standard Time", 120, Dst::Eu),
    ("FLE Standard Time", 120, Dst::Eu),
    ("South Africa Standard Time", 120, Dst::None),
    ("Kaliningrad Standard Time", 120, Dst::None),
    ("Libya Standard Time", 120, Dst::None),
    ("Namibia Standard Time", 120, Dst::None),
    ("Sudan Standard Time", 120, Dst::None),
    ("Arabic Standard Time", 180, Dst::None),
    ("Arab Standard Time", 180, Dst::None),
    ("E. Africa Standard Time", 180, Dst::None),
    ("Russian Standard Time", 180, Dst::None),
    ("Belarus Standard Time", 180, Dst::None),
    ("Turkey Standard Time", 180, Dst::None),
    ("Arabian Standard Time", 240, Dst::None),
    ("Azerbaijan Standard Time", 240, Dst::None),
    ("Georgian Standard Time", 240, Dst::None),
    ("Caucasus Standard Time", 240, Dst::None),
    ("Mauritius Standard Time", 240, Dst::None),
    ("Russia Time Zone 3", 240, Dst::None),
    ("Afghanistan Standard Time", 270, Dst::None),
    ("West Asia Standard Time", 300, Dst::None),
    ("Pakistan Standard Time", 300, Dst::None),
    ("Ekaterinburg Standard Time", 300, Dst::None),
    ("India Standard Time", 330, Dst::None),
    ("Sri Lanka Standard Time", 330, Dst::None),
    ("Nepal Standard Time", 345, Dst::None),
    ("Bangladesh Standard Time", 360, Dst::None),
    ("Omsk Standard Time", 360, Dst::None),
    ("Myanmar Standard Time", 390, Dst::None),
    ("SE Asia Standard Time", 420, Dst::None),
    ("N. Central Asia Standard Time", 420, Dst::None),
    ("North Asia Standard Time", 420, Dst::None),
    ("China Standard Time", 480, Dst::None),
    ("North Asia East Standard Time", 480, Dst::None),
    ("Singapore Standard Time", 480, Dst::None),
    ("W. Australia Standard Time", 480, Dst::None),
    ("Taipei Standard Time", 480, Dst::None),
    ("Ulaanbaatar Standard Time", 480, Dst::None),
    ("Tokyo Standard Time", 540, Dst::None),
    ("Korea Standard Time", 540, Dst::None),
    ("Yakutsk Standard Time", 540, Dst::None),
    ("AUS Central Standard Time", 570, Dst::None),
    ("E. Australia Standard Time", 600, Dst::None),
    ("West Pacific Standard Time", 600, Dst::None),
    ("Vladivostok Standard Time", 600, Dst::None),
    ("Magadan Standard Time", 660, Dst::None),
    ("Central Pacific Standard Time", 660, Dst::None),
    ("Russia Time Zone 10", 660, Dst::None),
    ("Russia Time Zone 11", 720, Dst::None),
    ("Kamchatka Standard Time", 720, Dst::None),
    ("Tonga Standard Time", 780, Dst::None),
    ("Samoa Standard Time", 780, Dst::None),
    ("Line Islands Standard Time", 840, Dst::None),
];

impl TimeZone {
    pub fn utc() -> Self {
        TimeZone {
            name: "UTC".into(),
            std_offset: 0,
            dst: Dst::None,
        }
    }

    /// The zone for a name, `None` if it is not one we can evaluate (see the module docs).
    pub fn parse(name: &str) -> Option<Self> {
        let zone = |std_offset, dst| TimeZone {
            name: name.to_string(),
            std_offset,
            dst,
        };
        let n = name.trim();
        if n.eq_ignore_ascii_case("UTC") || n.eq_ignore_ascii_case("Coordinated Universal Time") {
            return Some(zone(0, Dst::None));
        }
        if let Some(off) = n
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("UTC"))
            .and_then(|_| parse_offset(&n[3..]))
        {
            return Some(zone(off, Dst::None));
        }
        ZONES
            .iter()
            .find(|(z, _, _)| z.eq_ignore_ascii_case(n))
            .map(|(_, min, dst)| zone(min * 60, *dst))
    }

    /// The offset (seconds east of UTC) in effect at the instant `utc` (unix seconds).
    pub fn offset_at(&self, utc: i64) -> i64 {
        let std = self.std_offset;
        let year = civil_from_days((utc + std).div_euclid(86_400)).0;
        let (start, end) = match self.dst {
            Dst::None => return std,
            // 02:00 local standard time; ends at 02:00 local daylight time.
            Dst::Us => (
                local_secs(year, 3, nth_sunday(year, 3, 2), 2) - std,
                local_secs(year, 11, nth_sunday(year, 11, 1), 2) - std - 3600,
            ),
            Dst::Eu => (
                local_secs(year, 3, last_sunday(year, 3), 1),
                local_secs(year, 10, last_sunday(year, 10), 1),
            ),
        };
        if (start..end).contains(&utc) {
            std + 3600
        } else {
            std
        }
    }

    /// The instant of a local wall-clock time (seconds since 1970-01-01T00:00 local). A time that
    /// does not exist (the spring-forward hour) maps as if standard time still applied; a time
    /// that occurs twice maps to its first occurrence.
    pub fn to_utc(&self, local: i64) -> i64 {
        let dst_guess = local - self.std_offset - 3600;
        if self.offset_at(dst_guess) == self.std_offset + 3600 {
            return dst_guess;
        }
        local - self.std_offset
    }
}

/// `+hh`, `-hh`, `+hh:mm`, `+hhmm` as seconds east of UTC, at most 14 hours.
pub fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    if !rest.is_ascii() {
        return None;
    }
    let (h, m) = match rest.len() {
        2 => (rest, "00"),
        4 => (&rest[..2], &rest[2..]),
        5 if &rest[2..3] == ":" => (&rest[..2], &rest[3..]),
        _ => return None,
    };
    let (h, m) = (digits(h)?, digits(m)?);
    (h <= 14 && m < 60 && h * 60 + m <= 14 * 60).then_some(sign * (h * 3600 + m * 60))
}

fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A parsed ISO 8601 date-time: the wall-clock time as seconds since 1970-01-01T00:00 of its
/// own clock, and the offset it states (`Z` is `Some(0)`, none is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub local: i64,
    pub offset: Option<i64>,
}

/// Parses `YYYY-MM-DD[(T| )hh:mm[:ss[.fff]]][Z|±hh:mm]`; fractions of a second are dropped.
pub fn parse_datetime(s: &str) -> Option<DateTime> {
    let s = s.trim();
    let date = s.get(..10)?;
    let b = date.as_bytes();
    if !date.is_ascii() || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (
        digits(&date[..4])?,
        digits(&date[5..7])?,
        digits(&date[8..10])?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut rest = &s[10..];
    let mut secs = 0;
    if let Some(t) = rest.strip_prefix(['T', 't', ' ']) {
        let (hms, tail) = t.split_at(t.find(['Z', 'z', '+', '-']).unwrap_or(t.len()));
        secs = parse_time(hms)?;
        rest = tail;
    }
    let offset = match rest {
        "" => None,
        "Z" | "z" => Some(0),
        o => Some(parse_offset(o)?),
    };
    Some(DateTime {
        local: days_from_civil(y, mo, d) * 86_400 + secs,
        offset,
    })
}

/// `hh:mm[:ss[.fff]]` as seconds since midnight.
fn parse_time(s: &str) -> Option<i64> {
    let s = s.split_once('.').map_or(s, |(whole, frac)| {
        if frac.bytes().all(|b| b.is_ascii_digit()) && !frac.is_empty() {
            whole
        } else {
            "bad"
        }
    });
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let h = digits(parts[0])?;
    let m = digits(parts[1])?;
    let sec = parts.get(2).map_or(Some(0), |p| digits(p))?;
    (h < 24 && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

/// `YYYY-MM-DDThh:mm:ssZ` for unix seconds.
pub fn format_utc(secs: i64) -> String {
    sys::clock::rfc3339(secs)
}

pub use sys::clock::{civil_from_days, days_from_civil};

/// Day of the week of a day number, 0 = Sunday (1970-01-01 was a Thursday).
pub fn weekday(days: i64) -> u8 {
    (days + 4).rem_euclid(7) as u8
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn local_secs(y: i64, m: i64, d: i64, hour: i64) -> i64 {
    days_from_civil(y, m, d) * 86_400 + hour * 3600
}

/// Day of the month of the n-th Sunday.
fn nth_sunday(y: i64, m: i64, n: i64) -> i64 {
    let first = weekday(days_from_civil(y, m, 1)) as i64;
    1 + (7 - first) % 7 + 7 * (n - 1)
}

fn last_sunday(y: i64, m: i64) -> i64 {
    let last = days_in_month(y, m);
    last - weekday(days_from_civil(y, m, last)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        let d = parse_datetime(s).unwrap();
        d.local - d.offset.unwrap()
    }

    #[test]
    fn civil_round_trip_and_weekdays() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_723, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(weekday(0), 4);
        // 2024-03-10 was a Sunday, 2015-03-05 a Thursday.
        assert_eq!(weekday(days_from_civil(2024, 3, 10)), 0);
        assert_eq!(weekday(days_from_civil(2015, 3, 5)), 4);
        assert_eq!(
            format_utc(utc("2015-03-05T14:00:00Z")),
            "2015-03-05T14:00:00Z"
        );
    }

    #[test]
    fn datetimes() {
        let t = |s: &str| parse_datetime(s).map(|d| (format_utc(d.local), d.offset));
        let z = "2017-12-26T00:00:00Z".to_string();
        assert_eq!(t("2017-12-26T00:00:00"), Some((z.clone(), None)));
        assert_eq!(t("2017-12-26"), Some((z.clone(), None)));
        assert_eq!(t("2017-12-26 00:00"), Some((z.clone(), None)));
        assert_eq!(t("2017-12-26T00:00:00.000Z"), Some((z.clone(), Some(0))));
        assert_eq!(
            t("2017-12-26T00:00:00+05:30"),
            Some((z.clone(), Some(19_800)))
        );
        assert_eq!(t("2017-12-26T00:00:00-0800"), Some((z, Some(-28_800))));
        for bad in [
            "",
            "2017-13-01",
            "2017-02-29",
            "2017-12-26T24:00",
            "2017-12-26T1:00",
            "26/12/2017",
            "2017-12-26T00:00:00+15:00",
            "2017-12-26T00:00:00.Z",
            "2017-12-26X",
            "2017-12-26T00:00:00 Z",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert!(parse_datetime("2016-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn zones_and_offsets() {
        let off = |zone: &str, at: &str| TimeZone::parse(zone).unwrap().offset_at(utc(at)) / 60;
        assert_eq!(off("UTC", "2024-07-01T00:00:00Z"), 0);
        assert_eq!(off("utc+05:30", "2024-07-01T00:00:00Z"), 330);
        assert_eq!(off("UTC-11", "2024-07-01T00:00:00Z"), -660);
        assert_eq!(off("India Standard Time", "2024-07-01T00:00:00Z"), 330);
        // US: 2024-03-10 02:00 PST = 10:00Z; 2024-11-03 02:00 PDT = 09:00Z.
        assert_eq!(off("Pacific Standard Time", "2024-03-10T09:59:59Z"), -480);
        assert_eq!(off("Pacific Standard Time", "2024-03-10T10:00:00Z"), -420);
        assert_eq!(off("pacific standard time", "2024-11-03T08:59:59Z"), -420);
        assert_eq!(off("Pacific Standard Time", "2024-11-03T09:00:00Z"), -480);
        // EU: 2024-03-31 and 2024-10-27 at 01:00Z.
        assert_eq!(off("W. Europe Standard Time", "2024-03-31T00:59:59Z"), 60);
        assert_eq!(off("W. Europe Standard Time", "2024-03-31T01:00:00Z"), 120);
        assert_eq!(off("GMT Standard Time", "2024-10-27T00:59:59Z"), 60);
        assert_eq!(off("GMT Standard Time", "2024-10-27T01:00:00Z"), 0);
        for bad in [
            "AUS Eastern Standard Time",
            "Mars/Olympus",
            "UTC+15",
            "UTC+5",
            "",
        ] {
            assert_eq!(TimeZone::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_to_utc() {
        let z = TimeZone::parse("Pacific Standard Time").unwrap();
        let local = |s: &str| parse_datetime(s).unwrap().local;
        let at = |s: &str| format_utc(z.to_utc(local(s)));
        assert_eq!(at("2024-01-15T09:00:00"), "2024-01-15T17:00:00Z");
        assert_eq!(at("2024-07-15T09:00:00"), "2024-07-15T16:00:00Z");
        // 02:30 does not exist on 2024-03-10; 01:30 on 2024-11-03 happens twice (first: PDT).
        assert_eq!(at("2024-03-10T02:30:00"), "2024-03-10T10:30:00Z");
        assert_eq!(at("2024-11-03T01:30:00"), "2024-11-03T08:30:00Z");
        let ist = TimeZone::parse("UTC+05:30").unwrap();
        assert_eq!(
            format_utc(ist.to_utc(local("2024-01-01T05:30:00"))),
            "2024-01-01T00:00:00Z"
        );
    }
}
