//! Plays a recording back at its own pace (`ssh <account>@gateway replay …`).
//! Output goes through the [`ReplayFilter`] the caller holds (it resets the viewer's
//! terminal after the end, or after a stop); a marker (`m`, as where a recording
//! was cut) is shown as a line of its own.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::asciicast::{self, Header, ParseError};
use super::filter::ReplayFilter;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    /// 2.0 plays twice as fast.
    pub speed: f64,
    /// Pauses longer than this are shortened to it (a session left alone for an hour
    /// plays on at once).
    pub idle_limit: Duration,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            speed: 1.0,
            idle_limit: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("the recording is empty")]
    Empty,
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// What was played.
#[derive(Debug)]
pub struct Played {
    pub header: Header,
    pub events: u64,
    /// Whether `emit` asked to stop before the end.
    pub stopped: bool,
}

/// Reads the header and emits what `on_header` makes of it (a note before the
/// playback), then each output event's text, through `filter`, and each marker at
/// its time. `emit` returns `false` to stop.
pub async fn play<R, F, Fut>(
    reader: R,
    options: ReplayOptions,
    filter: &mut ReplayFilter,
    on_header: impl FnOnce(&Header) -> Option<String>,
    mut emit: F,
) -> Result<Played, ReplayError>
where
    R: AsyncBufRead + Unpin,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let speed = if options.speed.is_finite() && options.speed > 0.0 {
        options.speed
    } else {
        1.0
    };
    let mut lines = reader.lines();
    let Some(first) = lines.next_line().await? else {
        return Err(ReplayError::Empty);
    };
    let header = asciicast::parse_header(&first)?;
    if let Some(note) = on_header(&header)
        && !emit(note).await
    {
        return Ok(Played {
            header,
            events: 0,
            stopped: true,
        });
    }
    let started = tokio::time::Instant::now();
    // Where the playback clock stands: the recording's time with pauses shortened,
    // divided by the speed; sleeping until it keeps the pace without drifting.
    let (mut clock, mut previous) = (Duration::ZERO, 0.0_f64);
    let mut events = 0;
    let mut number = 1;
    while let Some(line) = lines.next_line().await? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let event = asciicast::parse_event(&line, number)?;
        let gap = Duration::from_secs_f64((event.at - previous).max(0.0)).min(options.idle_limit);
        previous = event.at;
        clock += gap.div_f64(speed);
        let text = match event.code.as_str() {
            "o" => filter.feed(&event.data),
            "m" => format!(
                "\r\n\x1b[0;7m[{}]\x1b[0m\r\n",
                crate::escape::field(&event.data)
            ),
            _ => continue,
        };
        tokio::time::sleep_until(started + clock).await;
        events += 1;
        if !text.is_empty() && !emit(text).await {
            return Ok(Played {
                header,
                events,
                stopped: true,
            });
        }
    }
    Ok(Played {
        header,
        events,
        stopped: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_plays_at_its_pace_with_long_pauses_shortened() {
        let cast = concat!(
            "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n",
            "[0.5, \"o\", \"a\"]\n",
            "[0.6, \"i\", \"typed\"]\n",
            "[1.0, \"o\", \"b\"]\n",
            "[3600.0, \"o\", \"c\"]\n",
        );
        let start = tokio::time::Instant::now();
        let seen = std::sync::Mutex::new(Vec::new());
        let played = play(
            cast.as_bytes(),
            ReplayOptions {
                speed: 10.0,
                idle_limit: Duration::from_secs(2),
            },
            &mut ReplayFilter::default(),
            |h| {
                assert_eq!((h.width, h.height), (80, 24));
                None
            },
            |text| {
                seen.lock().unwrap().push((text, start.elapsed()));
                async { true }
            },
        )
        .await
        .unwrap();
        assert_eq!(played.events, 3);
        let seen = seen.into_inner().unwrap();
        let texts: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        // A tenth of the recording's times; the hour's pause cut to two seconds.
        for ((_, at), due_ms) in seen.iter().zip([50, 100, 300]) {
            assert!(
                *at >= Duration::from_millis(due_ms),
                "{at:?} before {due_ms} ms"
            );
        }
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn output_is_filtered_and_markers_shown() {
        // An OSC 52 cut between two events, around coloured text; then a marker.
        let cast = concat!(
            "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\n",
            "[0.1, \"o\", \"\\u001b[31mred\\u001b]52;c;Y3VybA\"]\n",
            "[0.2, \"o\", \"==\\u0007\\u001b[0m!\"]\n",
            "[0.3, \"m\", \"cut\\u001b]0;x\\u0007\"]\n",
        );
        let seen = std::sync::Mutex::new(String::new());
        let mut filter = ReplayFilter::default();
        play(
            cast.as_bytes(),
            ReplayOptions {
                speed: 100.0,
                ..ReplayOptions::default()
            },
            &mut filter,
            |_| None,
            |text| {
                seen.lock().unwrap().push_str(&text);
                async { true }
            },
        )
        .await
        .unwrap();
        assert_eq!(
            seen.into_inner().unwrap(),
            "\x1b[31mred\x1b[m!\r\n\x1b[0;7m[cut\\u001b]0;x\\u0007]\x1b[0m\r\n"
        );
    }

    #[tokio::test]
    async fn a_broken_recording_says_where() {
        let cast = "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":0}\nnot json\n";
        let err = play(
            cast.as_bytes(),
            ReplayOptions::default(),
            &mut ReplayFilter::default(),
            |_| None,
            |_| async { true },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(matches!(
            play(
                &b""[..],
                ReplayOptions::default(),
                &mut ReplayFilter::default(),
                |_| None,
                |_| async { true }
            )
            .await,
            Err(ReplayError::Empty)
        ));
    }
}
