//! Turns a `Prompt` into 8 kHz audio: tenant announcements (files named in the store),
//! standard prompts (the shipped prompt set), digit prompts and espeak-ng text to speech.
//! Decoded audio is cached by file path (and the file's modification time and size, so an
//! announcement replaced through the API is heard at the next call), TTS output by text and
//! voice, so a busy prompt is read from disk once.

use crate::flow::Prompt;
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
    /// The espeak-ng program; `None` when it is not installed (SAY then fails over).
    pub espeak: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("announcement {0:?} is not provisioned for this tenant")]
    UnknownAnnouncement(String),
    #[error("standard prompt {0:?} not found (is the standard prompt set installed?)")]
    UnknownStandard(String),
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("text to speech is not available (espeak-ng not installed)")]
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
            Prompt::Tts { text, voice } => self.tts(text, voice.as_deref()),
        }
    }

    fn tts(&self, text: &str, voice: Option<&str>) -> Result<Arc<[i16]>, PromptError> {
        let espeak = self.cfg.espeak.as_deref().ok_or(PromptError::NoTts)?;
        let voice = voice.unwrap_or("en");
        let key = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(voice.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            let d = h.finalize();
            d.iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let path = self.cfg.tts_cache_dir.join(format!("{key}.wav"));
        if !path.exists() {
            std::fs::create_dir_all(&self.cfg.tts_cache_dir)
                .map_err(|e| PromptError::TtsFailed(format!("cannot create TTS cache dir: {e}")))?;
            let tmp = path.with_extension("tmp.wav");
            // Text goes through stdin, never the command line, so no text is taken as an option.
            let mut child = std::process::Command::new(espeak)
                .arg("-v")
                .arg(voice)
                .arg("-w")
                .arg(&tmp)
                .arg("--stdin")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| PromptError::TtsFailed(e.to_string()))?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin
                    .write_all(text.as_bytes())
                    .map_err(|e| PromptError::TtsFailed(e.to_string()))?;
            }
            // A hung synthesiser must not hold the prompt (nor this blocking thread) for ever.
            let deadline = std::time::Instant::now() + TTS_TIMEOUT;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let _ = std::fs::remove_file(&tmp);
                        return Err(PromptError::TtsFailed(format!(
                            "{espeak} did not finish within {} s",
                            TTS_TIMEOUT.as_secs()
                        )));
                    }
                    Err(e) => return Err(PromptError::TtsFailed(e.to_string())),
                }
            };
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(PromptError::TtsFailed(err.trim().to_string()));
            }
            std::fs::rename(&tmp, &path).map_err(|e| PromptError::TtsFailed(e.to_string()))?;
        }
        self.load(&path)
    }
}

/// How long espeak-ng may take to render one text before it is killed and the SAY fails over.
const TTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
                espeak: None,
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
