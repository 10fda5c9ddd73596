//! Turns a `Prompt` into 8 kHz audio: tenant announcements (files named in the store),
//! standard prompts (the shipped prompt set), digit prompts and espeak-ng text to speech.
//! Decoded audio is cached by file path (and the file's modification time and size, so an
//! announcement replaced through the API is heard at the next call), TTS output by provider,
//! voice and text (see `tts.rs`), so a busy prompt is read from disk once.

use crate::flow::Prompt;
use crate::tts::{Ssml, TtsProvider, TtsText};
use callplane_store::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where prompts come from.
#[derive(Debug, Clone)]
pub struct PromptConfig {
    /// The standard prompt set (`standardAnnouncement: true`), e.g. Asterisk's core sounds.
    pub sounds_dir: PathBuf,
    /// Callplane's own prompts (digits for read-back).
    pub prompts_dir: PathBuf,
    /// Generated TTS audio.
    pub tts_cache_dir: PathBuf,
    /// Text-to-speech providers, in order of preference: a SAY goes to the next one when one
    /// fails. Empty when none is available (SAY then fails over).
    pub tts: Vec<Arc<dyn TtsProvider>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("announcement {0:?} is not provisioned for this tenant")]
    UnknownAnnouncement(String),
    #[error("standard prompt {0:?} not found (is the standard prompt set installed?)")]
    UnknownStandard(String),
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("text to speech is not available (no provider: espeak-ng not installed)")]
    NoTts,
    #[error("text to speech failed: {0}")]
    TtsFailed(String),
    #[error("store: {0}")]
    Store(String),
}

pub struct PromptLibrary {
    cfg: PromptConfig,
    store: Store,
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

/// Decoded audio with the stamp of the file it was read from.
type Cached = (FileStamp, Arc<[i16]>);

/// What tells one version of a file from the next: modification time and size.
type FileStamp = (Option<std::time::SystemTime>, u64);

fn stamp(path: &Path) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

/// A standard prompt name is a relative path inside the prompt set (`digits/1`,
/// `vm-goodbye`): no parent-directory steps and no absolute paths.
fn safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

impl PromptLibrary {
    pub fn new(cfg: PromptConfig, store: Store) -> Self {
        PromptLibrary {
            cfg,
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &PromptConfig {
        &self.cfg
    }

    fn load(&self, path: &Path) -> Result<Arc<[i16]>, PromptError> {
        let stamp = stamp(path);
        if let Ok(cache) = self.cache.lock() {
            if let Some((s, a)) = cache.get(path) {
                if *s == stamp {
                    return Ok(a.clone());
                }
            }
        }
        let samples =
            callplane_media::wav::load_wav_8k(path).map_err(|e| PromptError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let audio: Arc<[i16]> = samples.into();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(path.to_path_buf(), (stamp, audio.clone()));
        }
        Ok(audio)
    }

    fn standard_path(&self, name: &str) -> Result<PathBuf, PromptError> {
        let name = name.trim_end_matches(".wav");
        if !safe_relative(name) {
            return Err(PromptError::UnknownStandard(name.to_string()));
        }
        let p = self.cfg.sounds_dir.join(format!("{name}.wav"));
        if p.exists() {
            Ok(p)
        } else {
            Err(PromptError::UnknownStandard(name.to_string()))
        }
    }

    fn digit_path(&self, d: char) -> Option<PathBuf> {
        let name = match d {
            '0'..='9' => format!("digit-{d}"),
            '*' => "digit-star".into(),
            '#' => "digit-hash".into(),
            _ => return None,
        };
        Some(self.cfg.prompts_dir.join(format!("{name}.wav")))
    }

    /// Resolves and decodes one prompt. Blocking (file I/O, espeak-ng): call from a blocking
    /// context.
    pub fn resolve_blocking(
        &self,
        tenant: &str,
        prompt: &Prompt,
    ) -> Result<Arc<[i16]>, PromptError> {
        match prompt {
            Prompt::Announcement {
                name,
                standard: false,
            } => {
                let a = self
                    .store
                    .get_announcement(tenant, name)
                    .map_err(|e| PromptError::Store(e.to_string()))?
                    .ok_or_else(|| PromptError::UnknownAnnouncement(name.clone()))?;
                self.load(Path::new(&a.file))
            }
            Prompt::Announcement {
                name,
                standard: true,
            } => {
                let p = self.standard_path(name)?;
                self.load(&p)
            }
            Prompt::Digits(digits) => {
                let mut out: Vec<i16> = Vec::new();
                for d in digits.chars() {
                    let Some(p) = self.digit_path(d) else {
                        continue;
                    };
                    out.extend_from_slice(&self.load(&p)?);
                    // A short pause keeps the digits apart.
                    out.extend(std::iter::repeat_n(0i16, 800));
                }
                Ok(out.into())
            }
            Prompt::Tts { text, voice, ssml } => self.tts(text, voice.as_deref(), *ssml),
        }
    }

    /// Speaks `text` with the first provider that can: each provider's file is cached by
    /// (provider, its voice, SSML or text, the text).
    fn tts(&self, text: &str, voice: Option<&str>, ssml: bool) -> Result<Arc<[i16]>, PromptError> {
        let text = if ssml {
            TtsText::Ssml(
                Ssml::parse(text).map_err(|e| PromptError::TtsFailed(format!("SSML: {e}")))?,
            )
        } else {
            TtsText::Plain(text.to_owned())
        };
        let mut last = PromptError::NoTts;
        for provider in &self.cfg.tts {
            let (resolved, note) = provider.voice(voice);
            if let Some(note) = note {
                tracing::info!(provider = provider.id(), requested = ?voice, voice = %resolved, "SAY voice: {note}");
            }
            let (kind, body) = text.key_text();
            let key = {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                for part in [provider.id(), resolved.as_str(), kind, body] {
                    h.update(part.as_bytes());
                    h.update([0]);
                }
                let d = h.finalize();
                d.iter()
                    .take(16)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            let path = self.cfg.tts_cache_dir.join(format!("{key}.wav"));
            if !path.exists() {
                std::fs::create_dir_all(&self.cfg.tts_cache_dir).map_err(|e| {
                    PromptError::TtsFailed(format!("cannot create TTS cache dir: {e}"))
                })?;
                let tmp = path.with_extension(format!("{}.tmp.wav", std::process::id()));
                if let Err(e) = provider.render(&text, &resolved, &tmp) {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(provider = provider.id(), voice = %resolved, error = %e, "text to speech failed");
                    last = PromptError::TtsFailed(format!("{}: {e}", provider.id()));
                    continue;
                }
                std::fs::rename(&tmp, &path).map_err(|e| PromptError::TtsFailed(e.to_string()))?;
            }
            match self.load(&path) {
                Ok(audio) => return Ok(audio),
                Err(e) => {
                    // A bad file must not stay cached.
                    let _ = std::fs::remove_file(&path);
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// How long a provider may take to render one text before it is given up (the next provider,
/// or the SAY fails over).
pub const TTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Finds espeak-ng on PATH (or at the configured path); None when missing.
pub fn find_program(name: &str) -> Option<String> {
    if name.contains('/') {
        return Path::new(name).exists().then(|| name.to_string());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_names_cannot_escape_the_prompt_set() {
        assert!(safe_relative("digits/1"));
        assert!(safe_relative("vm-goodbye"));
        assert!(!safe_relative("../../etc/passwd"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("a//b"));
        assert!(!safe_relative(""));
    }

    #[test]
    fn a_replaced_announcement_file_is_read_again() {
        use callplane_store::{Announcement, Provisioning, Tenant};
        let dir = std::env::temp_dir().join(format!(
            "callplane-prompts-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hello.wav");
        let write = |n: usize| {
            let mut w = callplane_media::wav::WavWriter::create(&file).unwrap();
            w.write_samples(&vec![1000i16; n]).unwrap();
            w.finalize().unwrap();
        };
        let store = Store::open_in_memory().unwrap();
        let tenant: Tenant =
            serde_json::from_value(serde_json::json!({"name": "t", "customerNumber": 1})).unwrap();
        store
            .apply_provisioning(&Provisioning {
                tenants: vec![tenant],
                announcements: vec![Announcement {
                    tenant: "t".into(),
                    name: "hello".into(),
                    file: file.to_string_lossy().into_owned(),
                }],
                ..Provisioning::default()
            })
            .unwrap();
        let lib = PromptLibrary::new(
            PromptConfig {
                sounds_dir: dir.clone(),
                prompts_dir: dir.clone(),
                tts_cache_dir: dir.clone(),
                tts: Vec::new(),
            },
            store,
        );
        let prompt = Prompt::Announcement {
            name: "hello".into(),
            standard: false,
        };
        write(800);
        assert_eq!(lib.resolve_blocking("t", &prompt).unwrap().len(), 800);
        assert_eq!(lib.resolve_blocking("t", &prompt).unwrap().len(), 800);
        write(1600);
        assert_eq!(lib.resolve_blocking("t", &prompt).unwrap().len(), 1600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
