//! Text to speech for SAY blocks: TENIOS voice names (`de.female.1`, `en-us.male.2`) mapped to
//! the voices a provider has, SSML checked when a block is validated and rendered for each
//! provider, and the providers themselves behind one trait — espeak-ng built in, and an
//! OpenAI-compatible `/v1/audio/speech` endpoint for better voices.
//!
//! Providers render into a WAV file (the prompt library caches those by provider, voice and
//! text and reads them back at 8 kHz). They are called on a blocking thread, each bounded by its
//! own timeout; a provider that fails hands the text to the next one, so a SAY is only silent
//! when no provider can speak at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest pause one `<break>` may ask for.
pub const MAX_BREAK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Voices

/// A TENIOS voice name: `language[-region].gender.n` (`de.female.1`, `en-au.male.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeniosVoice {
    /// Lower-case language tag, e.g. `de`, `en-au`.
    pub language: String,
    pub gender: Gender,
    /// 1-based voice number within the language and gender.
    pub number: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    Female,
    Male,
}

impl TeniosVoice {
    /// Reads a TENIOS voice name; `None` for anything else (a provider's own voice name).
    pub fn parse(name: &str) -> Option<TeniosVoice> {
        let mut parts = name.split('.');
        let (language, gender, number) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let gender = if gender.eq_ignore_ascii_case("female") {
            Gender::Female
        } else if gender.eq_ignore_ascii_case("male") {
            Gender::Male
        } else {
            return None;
        };
        let number: u32 = number.parse().ok().filter(|n| *n >= 1)?;
        let language = language.to_ascii_lowercase();
        let mut subtags = language.split('-');
        let primary = subtags.next()?;
        let ok = (2..=3).contains(&primary.len())
            && primary.bytes().all(|b| b.is_ascii_lowercase())
            && subtags.all(|t| {
                (2..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        ok.then_some(TeniosVoice {
            language,
            gender,
            number,
        })
    }

    /// The primary language subtag (`en` of `en-au`).
    pub fn primary_language(&self) -> &str {
        self.language.split('-').next().unwrap_or(&self.language)
    }
}

/// espeak-ng's voices: which languages are installed, and how a requested voice maps to one.
#[derive(Debug, Clone, Default)]
pub struct EspeakVoices {
    /// Language names from `espeak-ng --voices` (`de`, `en-us`, `en-gb-x-rp`…); empty when the
    /// list could not be read (then requested languages are passed on unchecked).
    languages: BTreeSet<String>,
}

/// The voice used when a SAY names none, or names one nobody has.
pub const DEFAULT_ESPEAK_VOICE: &str = "en";

impl EspeakVoices {
    /// Asks the program for its voice list (`espeak-ng --voices`).
    pub fn list(program: &str) -> EspeakVoices {
        let out = std::process::Command::new(program)
            .arg("--voices")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        let text = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => return EspeakVoices::default(),
        };
        EspeakVoices::from_listing(&text)
    }

    /// Reads the table `espeak-ng --voices` prints (the second column is the language).
    pub fn from_listing(text: &str) -> EspeakVoices {
        let languages = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_ascii_lowercase)
            .collect();
        EspeakVoices { languages }
    }

    /// Whether espeak-ng speaks `language`: listed, or the primary subtag of listed ones
    /// (espeak-ng takes `en` for its default English, `de` for German).
    fn speaks(&self, language: &str) -> bool {
        self.languages.is_empty()
            || self.languages.contains(language)
            || self
                .languages
                .iter()
                .any(|l| l.split('-').next() == Some(language))
    }

    /// The `-v` argument for a requested voice, and why it is not what was asked for (to be
    /// logged) when it falls back. A TENIOS name becomes `<language>+f<n>`/`+m<n>` (espeak-ng's
    /// female and male variants); an unknown region falls back to its language, an unknown
    /// language to [`DEFAULT_ESPEAK_VOICE`] with the same variant. Any other name is taken as
    /// an espeak-ng voice (`de`, `en-us+m3`) if its language is installed.
    pub fn resolve(&self, requested: Option<&str>) -> (String, Option<String>) {
        let Some(requested) = requested else {
            return (DEFAULT_ESPEAK_VOICE.to_owned(), None);
        };
        if let Some(v) = TeniosVoice::parse(requested) {
            let variant = match v.gender {
                Gender::Female => format!("f{}", v.number.min(5)),
                Gender::Male => format!("m{}", v.number.min(8)),
            };
            let (language, note) = if self.speaks(&v.language) {
                (v.language.clone(), None)
            } else if self.speaks(v.primary_language()) {
                let p = v.primary_language().to_owned();
                let note = format!("no {} voice installed: using {p}", v.language);
                (p, Some(note))
            } else {
                let note = format!(
                    "no {} voice installed: using the default voice {DEFAULT_ESPEAK_VOICE}",
                    v.language
                );
                (DEFAULT_ESPEAK_VOICE.to_owned(), Some(note))
            };
            return (format!("{language}+{variant}"), note);
        }
        let language = requested.split('+').next().unwrap_or(requested);
        if self.speaks(&language.to_ascii_lowercase()) {
            (requested.to_owned(), None)
        } else {
            let note = format!(
                "unknown voice {requested:?}: using the default voice {DEFAULT_ESPEAK_VOICE}"
            );
            (DEFAULT_ESPEAK_VOICE.to_owned(), Some(note))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SSML

/// SAY text that was checked as SSML (`useSsml: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssml {
    /// The document as written, wrapped in `<speak>` when it was not.
    source: String,
}

/// SSML 1.1 elements that are valid but not rendered (their text, if any, is spoken as text).
const SSML_PASSIVE: &[&str] = &[
    "lang", "voice", "mark", "audio", "phoneme", "w", "token", "desc", "meta", "metadata",
    "lexicon", "lookup", "par", "seq",
];

impl Ssml {
    /// Checks `text` as SSML: well-formed XML (no DTD), `<speak>` at the root (added when the
    /// text has no root element of its own), only SSML elements, and valid values for what
    /// is rendered: `break` (`time` up to 10 s, `strength`), `say-as` (`interpret-as`),
    /// `prosody` (`rate`, `pitch`, `volume`), `emphasis` (`level`), `sub` (`alias`).
    pub fn parse(text: &str) -> Result<Ssml, String> {
        let trimmed = text.trim();
        let source = if trimmed.starts_with("<speak") || trimmed.starts_with("<?xml") {
            trimmed.to_owned()
        } else {
            format!("<speak>{trimmed}</speak>")
        };
        let doc =
            roxmltree::Document::parse(&source).map_err(|e| format!("not well-formed XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "speak" {
            return Err(format!(
                "the root element must be <speak> (got <{}>)",
                root.tag_name().name()
            ));
        }
        check_children(root)?;
        Ok(Ssml { source })
    }

    /// The document as espeak-ng reads it with `-m`: its own SSML support renders `break`,
    /// `prosody`, `emphasis`, `p`, `s` and spelled-out `say-as`; digits and telephone numbers
    /// are spelled here, `sub` is replaced by its alias, other elements leave their text.
    pub fn to_espeak(&self) -> String {
        let Ok(doc) = roxmltree::Document::parse(&self.source) else {
            return String::new(); // checked in parse
        };
        let mut out = String::from("<speak>");
        render(doc.root_element(), &mut out, true);
        out.push_str("</speak>");
        out
    }

    /// The words alone, for providers that take plain text: breaks become commas or full
    /// stops, spelled-out parts are spaced.
    pub fn to_plain(&self) -> String {
        let Ok(doc) = roxmltree::Document::parse(&self.source) else {
            return String::new();
        };
        let mut out = String::new();
        render(doc.root_element(), &mut out, false);
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

fn check_children(node: roxmltree::Node) -> Result<(), String> {
    for child in node.children().filter(roxmltree::Node::is_element) {
        check_element(child)?;
        check_children(child)?;
    }
    Ok(())
}

fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

fn check_element(node: roxmltree::Node) -> Result<(), String> {
    let name = node.tag_name().name();
    let bad = |what: &str, value: &str| Err(format!("<{name}> {what} {value:?} is not valid"));
    match name {
        "p" | "s" | "speak" => Ok(()),
        "break" => {
            if let Some(t) = attr(node, "time") {
                match parse_ssml_time(t) {
                    Some(d) if d <= MAX_BREAK => {}
                    Some(_) => return Err(format!("<break> time {t:?} is longer than 10s")),
                    None => return bad("time", t),
                }
            }
            if let Some(s) = attr(node, "strength") {
                if !["none", "x-weak", "weak", "medium", "strong", "x-strong"].contains(&s) {
                    return bad("strength", s);
                }
            }
            Ok(())
        }
        "say-as" => match attr(node, "interpret-as") {
            None => Err("<say-as> needs interpret-as".to_owned()),
            Some(i) if SAY_AS.contains(&i) => Ok(()),
            Some(i) => bad("interpret-as", i),
        },
        "prosody" => {
            for (a, keywords) in [
                (
                    "rate",
                    &["x-slow", "slow", "medium", "fast", "x-fast", "default"][..],
                ),
                (
                    "pitch",
                    &["x-low", "low", "medium", "high", "x-high", "default"][..],
                ),
                (
                    "volume",
                    &[
                        "silent", "x-soft", "soft", "medium", "loud", "x-loud", "default",
                    ][..],
                ),
            ] {
                if let Some(v) = attr(node, a) {
                    if !keywords.contains(&v) && !is_relative_value(v) {
                        return bad(a, v);
                    }
                }
            }
            Ok(())
        }
        "emphasis" => match attr(node, "level") {
            None => Ok(()),
            Some(l) if ["strong", "moderate", "none", "reduced"].contains(&l) => Ok(()),
            Some(l) => bad("level", l),
        },
        "sub" => match attr(node, "alias") {
            Some(_) => Ok(()),
            None => Err("<sub> needs alias".to_owned()),
        },
        other if SSML_PASSIVE.contains(&other) => Ok(()),
        other => Err(format!("<{other}> is not an SSML element")),
    }
}

/// `interpret-as` values accepted (the common ones of SSML engines).
const SAY_AS: &[&str] = &[
    "digits",
    "characters",
    "spell-out",
    "verbatim",
    "telephone",
    "cardinal",
    "number",
    "ordinal",
    "date",
    "time",
    "currency",
    "unit",
    "fraction",
    "expletive",
    "address",
    "interjection",
];

/// `+10%`, `-2st`, `80%`, `+6dB`, `120Hz`, `1.5`.
fn is_relative_value(v: &str) -> bool {
    let body = v.strip_prefix(['+', '-']).unwrap_or(v);
    let num_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, unit) = body.split_at(num_end);
    !num.is_empty() && num.parse::<f64>().is_ok() && ["", "%", "st", "dB", "Hz"].contains(&unit)
}

/// `500ms`, `1s`, `1.5s` (a bare number is seconds).
fn parse_ssml_time(t: &str) -> Option<Duration> {
    let t = t.trim();
    let (num, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = t.strip_suffix('s') {
        (s, 1.0)
    } else {
        (t, 1.0)
    };
    let x: f64 = num.trim().parse().ok()?;
    (x.is_finite() && x >= 0.0).then(|| Duration::from_secs_f64(x * scale))
}

/// `text` with `& < > "` as XML entities (for text put into SSML).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape(text, &mut out);
    out
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Digits one by one (`"0301 234"` → `"0 3 0 1, 2 3 4"`): separators between groups pause.
fn spell_digits(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() || c == '+' || c == '*' || c == '#' {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            out.push(c);
        } else if !out.is_empty() && !out.ends_with(", ") {
            out.push_str(", ");
        }
    }
    out.trim_end_matches([',', ' ']).to_owned()
}

/// Renders `node`'s children: for espeak-ng (`markup`) or as plain words.
fn render(node: roxmltree::Node, out: &mut String, markup: bool) {
    for child in node.children() {
        if child.is_text() {
            let text = child.text().unwrap_or("");
            if markup {
                escape(text, out);
            } else {
                out.push_str(text);
            }
            continue;
        }
        if !child.is_element() {
            continue;
        }
        let name = child.tag_name().name();
        let text: String = child
            .descendants()
            .filter(roxmltree::Node::is_text)
            .filter_map(|n| n.text())
            .collect();
        match name {
            "break" => {
                if markup {
                    out.push_str("<break");
                    for a in ["time", "strength"] {
                        if let Some(v) = attr(child, a) {
                            out.push_str(&format!(" {a}=\""));
                            escape(v, out);
                            out.push('"');
                        }
                    }
                    out.push_str("/>");
                } else {
                    out.push_str(", ");
                }
            }
            "say-as" => match attr(child, "interpret-as").unwrap_or("") {
                "digits" | "telephone" => {
                    out.push(' ');
                    escape(&spell_digits(&text), out);
                    out.push(' ');
                }
                "characters" | "spell-out" | "verbatim" => {
                    if markup {
                        out.push_str("<say-as interpret-as=\"characters\">");
                        escape(&text, out);
                        out.push_str("</say-as>");
                    } else {
                        let spaced: Vec<String> = text
                            .chars()
                            .filter(|c| !c.is_whitespace())
                            .map(String::from)
                            .collect();
                        out.push_str(&format!(" {} ", spaced.join(" ")));
                    }
                }
                _ => {
                    if markup {
                        escape(&text, out);
                    } else {
                        out.push_str(&text);
                    }
                }
            },
            "sub" => {
                let alias = attr(child, "alias").unwrap_or("");
                if markup {
                    escape(alias, out);
                } else {
                    out.push_str(alias);
                }
            }
            "prosody" | "emphasis" | "p" | "s" if markup => {
                out.push('<');
                out.push_str(name);
                for a in child.attributes() {
                    if ["rate", "pitch", "volume", "level"].contains(&a.name()) {
                        out.push_str(&format!(" {}=\"", a.name()));
                        escape(a.value(), out);
                        out.push('"');
                    }
                }
                out.push('>');
                render(child, out, markup);
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            }
            "p" | "s" => {
                render(child, out, markup);
                out.push_str(". ");
            }
            "desc" | "meta" | "metadata" | "lexicon" | "mark" => {}
            _ => render(child, out, markup),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Providers

/// What a SAY asks to be spoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsText {
    Plain(String),
    Ssml(Ssml),
}

impl TtsText {
    /// The text for a cache key (SSML keeps its markup: a pause is part of the audio).
    pub fn key_text(&self) -> (&'static str, &str) {
        match self {
            TtsText::Plain(t) => ("text", t),
            TtsText::Ssml(s) => ("ssml", &s.source),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("{0}")]
    Failed(String),
    #[error("did not finish within {0:?}")]
    Timeout(Duration),
}

/// A text-to-speech engine. Called on a blocking thread; it renders into a WAV file (any rate
/// and bit depth the WAV reader takes) and bounds its own run time.
pub trait TtsProvider: Send + Sync + std::fmt::Debug {
    /// A short name for logs and cache keys (`espeak`, `http`).
    fn id(&self) -> &'static str;
    /// The provider's voice for a SAY's `voiceName` (absent: its default), and a note to log
    /// when that is a fallback.
    fn voice(&self, requested: Option<&str>) -> (String, Option<String>);
    /// Renders `text` with `voice` into `out`.
    fn render(&self, text: &TtsText, voice: &str, out: &Path) -> Result<(), TtsError>;
}

/// espeak-ng, run as a program: the text (or SSML with `-m`) goes through stdin, never the
/// command line.
#[derive(Debug)]
pub struct EspeakTts {
    pub program: String,
    pub voices: EspeakVoices,
    pub timeout: Duration,
}

impl TtsProvider for EspeakTts {
    fn id(&self) -> &'static str {
        "espeak"
    }

    fn voice(&self, requested: Option<&str>) -> (String, Option<String>) {
        self.voices.resolve(requested)
    }

    fn render(&self, text: &TtsText, voice: &str, out: &Path) -> Result<(), TtsError> {
        use std::io::Write;
        let (input, ssml) = match text {
            TtsText::Plain(t) => (t.clone(), false),
            TtsText::Ssml(s) => (s.to_espeak(), true),
        };
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg("-v").arg(voice);
        if ssml {
            cmd.arg("-m");
        }
        let mut child = cmd
            .arg("-w")
            .arg(out)
            .arg("--stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| TtsError::Failed(format!("cannot run {}: {e}", self.program)))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| TtsError::Failed(e.to_string()))?;
        }
        // A hung synthesiser must not hold the prompt (nor this blocking thread) for ever.
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(TtsError::Timeout(self.timeout));
                }
                Err(e) => return Err(TtsError::Failed(e.to_string())),
            }
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(TtsError::Failed(err.trim().to_owned()));
        }
        Ok(())
    }
}

/// An OpenAI-compatible speech endpoint (`POST <url>` with
/// `{"model","input","voice","response_format":"wav"}` and a bearer key), as served by OpenAI
/// and by self-hosted engines that copy its API. SSML is sent as its words.
pub struct HttpTts {
    /// The full endpoint URL, e.g. `https://api.openai.com/v1/audio/speech`.
    pub url: String,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub api_key: Option<String>,
    pub model: String,
    /// The provider's voice for a SAY without `voiceName` or with one not in `voices`.
    pub default_voice: String,
    /// SAY `voiceName` (a TENIOS name such as `de.female.1`) → the provider's voice.
    pub voices: BTreeMap<String, String>,
    pub timeout: Duration,
    pub client: reqwest::Client,
    /// The runtime the blocking caller runs the request on.
    pub runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HttpTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTts")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("default_voice", &self.default_voice)
            .finish()
    }
}

impl HttpTts {
    /// A provider for `url`, with its own connection pool, run on the current Tokio runtime.
    pub fn new(
        url: String,
        api_key: Option<String>,
        model: String,
        default_voice: String,
        voices: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<HttpTts, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the HTTP TTS provider needs a Tokio runtime".to_owned())?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpTts {
            url,
            api_key,
            model,
            default_voice,
            voices,
            timeout,
            client,
            runtime,
        })
    }
}

impl TtsProvider for HttpTts {
    fn id(&self) -> &'static str {
        "http"
    }

    fn voice(&self, requested: Option<&str>) -> (String, Option<String>) {
        match requested {
            None => (self.default_voice.clone(), None),
            Some(r) => match self.voices.get(r) {
                Some(v) => (v.clone(), None),
                None if TeniosVoice::parse(r).is_none() && !r.is_empty() => (r.to_owned(), None),
                None => (
                    self.default_voice.clone(),
                    Some(format!(
                        "voice {r:?} has no entry in [tts] voices: using {}",
                        self.default_voice
                    )),
                ),
            },
        }
    }

    fn render(&self, text: &TtsText, voice: &str, out: &Path) -> Result<(), TtsError> {
        let input = match text {
            TtsText::Plain(t) => t.clone(),
            TtsText::Ssml(s) => s.to_plain(),
        };
        let body = serde_json::json!({
            "model": self.model,
            "input": input,
            "voice": voice,
            "response_format": "wav",
        });
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let timeout = self.timeout;
        let bytes = self.runtime.block_on(async move {
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    TtsError::Timeout(timeout)
                } else {
                    TtsError::Failed(format!("request failed: {}", e.without_url()))
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(TtsError::Failed(format!("the endpoint answered {status}")));
            }
            resp.bytes()
                .await
                .map_err(|e| TtsError::Failed(format!("reading the audio: {}", e.without_url())))
        })?;
        // Checked before it is cached: an error page must not become a prompt.
        callplane_media::wav::decode_wav_8k(&bytes).map_err(|e| {
            TtsError::Failed(format!("the endpoint's audio is not a WAV file: {e}"))
        })?;
        std::fs::write(out, &bytes).map_err(|e| TtsError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenios_voice_names() {
        let v = TeniosVoice::parse("de.female.1").expect("valid");
        assert_eq!(
            (v.language.as_str(), v.gender, v.number),
            ("de", Gender::Female, 1)
        );
        let v = TeniosVoice::parse("EN-AU.Male.2").expect("valid");
        assert_eq!((v.language.as_str(), v.primary_language()), ("en-au", "en"));
        for bad in [
            "de",
            "de+f2",
            "de.female",
            "de.female.0",
            "de.other.1",
            "d.female.1",
            "de.female.1.x",
            "de-.male.1",
        ] {
            assert_eq!(TeniosVoice::parse(bad), None, "{bad}");
        }
    }

    fn installed() -> EspeakVoices {
        EspeakVoices::from_listing(
            "Pty Language       Age/Gender VoiceName          File                 Other Languages\n\
              5  de              --/M      German             gmw/de\n\
              2  en-gb           --/M      English_(Great_Britain) gmw/en\n\
              5  en-us           --/M      English_(America)  gmw/en-US\n\
              5  fr-fr           --/M      French_(France)    roa/fr\n",
        )
    }

    #[test]
    fn espeak_voice_mapping_never_goes_silent() {
        let v = installed();
        assert_eq!(v.resolve(None), ("en".into(), None));
        assert_eq!(v.resolve(Some("de.female.2")), ("de+f2".into(), None));
        assert_eq!(v.resolve(Some("en-us.male.1")), ("en-us+m1".into(), None));
        assert_eq!(v.resolve(Some("de.female.9")).0, "de+f5");
        // An uninstalled region: the language's default voice, said in the log.
        let (voice, note) = v.resolve(Some("en-au.female.1"));
        assert_eq!(voice, "en+f1");
        assert!(note.is_some_and(|n| n.contains("en-au")));
        // French is listed only with a region; its primary subtag still speaks.
        assert_eq!(v.resolve(Some("fr.male.1")), ("fr+m1".into(), None));
        // An unknown language: the system default, said in the log.
        let (voice, note) = v.resolve(Some("xx.male.3"));
        assert_eq!(voice, "en+m3");
        assert!(note.is_some());
        // espeak-ng's own names pass when their language is installed.
        assert_eq!(v.resolve(Some("de")), ("de".into(), None));
        assert_eq!(v.resolve(Some("en-us+f3")), ("en-us+f3".into(), None));
        let (voice, note) = v.resolve(Some("klingon"));
        assert_eq!((voice.as_str(), note.is_some()), ("en", true));
        // No listing: passed on unchecked.
        assert_eq!(
            EspeakVoices::default().resolve(Some("it.male.1")).0,
            "it+m1"
        );
    }

    #[test]
    fn ssml_is_checked() {
        for ok in [
            "<speak>Hallo <break time=\"1s\"/> Welt</speak>",
            "Hallo <break time=\"500ms\"/> Welt",
            "<speak><p><s>One.</s><s>Two.</s></p></speak>",
            "<speak><say-as interpret-as=\"digits\">123</say-as></speak>",
            "<speak><say-as interpret-as=\"telephone\">+49 30 1234</say-as></speak>",
            "<speak><prosody rate=\"slow\" pitch=\"+10%\" volume=\"-6dB\">x</prosody></speak>",
            "<speak><emphasis level=\"strong\">x</emphasis><sub alias=\"World Wide Web\">WWW</sub></speak>",
            "<speak><lang xml:lang=\"en-US\">hi</lang><mark name=\"a\"/><audio src=\"x\">fallback</audio></speak>",
            "plain text is a speak document too",
        ] {
            assert!(Ssml::parse(ok).is_ok(), "{ok}: {:?}", Ssml::parse(ok));
        }
        for (bad, why) in [
            ("<speak>unclosed", "not well-formed"),
            ("<speak><break time=\"forever\"/></speak>", "time"),
            ("<speak><break time=\"11s\"/></speak>", "longer than 10s"),
            ("<speak><say-as>1</say-as></speak>", "interpret-as"),
            (
                "<speak><say-as interpret-as=\"morse\">1</say-as></speak>",
                "interpret-as",
            ),
            ("<speak><prosody rate=\"warp\">x</prosody></speak>", "rate"),
            (
                "<speak><blink>x</blink></speak>",
                "<blink> is not an SSML element",
            ),
            ("<?xml version=\"1.0\"?><voice>x</voice>", "root element"),
            (
                "<!DOCTYPE speak [<!ENTITY a \"b\">]><speak>&a;</speak>",
                "not well-formed",
            ),
            ("<speak><sub>x</sub></speak>", "alias"),
        ] {
            let err = Ssml::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ssml_renders_for_espeak_and_as_plain_words() {
        let s = Ssml::parse(
            "<speak>Ihre Nummer <say-as interpret-as=\"telephone\">030-12</say-as>, \
             <break time=\"1s\"/><prosody rate=\"slow\">danke &amp; tschüss</prosody> \
             <say-as interpret-as=\"characters\">AB</say-as> <sub alias=\"Doktor\">Dr.</sub></speak>",
        )
        .expect("valid");
        assert_eq!(
            s.to_espeak(),
            "<speak>Ihre Nummer  0 3 0, 1 2 , <break time=\"1s\"/><prosody rate=\"slow\">danke &amp; \
             tschüss</prosody> <say-as interpret-as=\"characters\">AB</say-as> Doktor</speak>"
        );
        assert_eq!(
            s.to_plain(),
            "Ihre Nummer 0 3 0, 1 2 , , danke & tschüss A B Doktor"
        );
    }

    #[test]
    fn times_and_relative_values() {
        assert_eq!(parse_ssml_time("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_ssml_time("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_ssml_time("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ssml_time("-1s"), None);
        assert_eq!(parse_ssml_time("soon"), None);
        for ok in ["+10%", "-2st", "80%", "+6dB", "120Hz", "1.5"] {
            assert!(is_relative_value(ok), "{ok}");
        }
        for bad in ["", "%", "fast!", "10 %", "+"] {
            assert!(!is_relative_value(bad), "{bad}");
        }
    }
}
