//! The built-in offline speech recognizer: Moonshine's English "base" model (Moonshine AI,
//! MIT licence) run by ONNX Runtime, both as the PyPI package `moonshine-cpp` ships them
//! (`scripts/install-moonshine.sh` puts the package where [`DEFAULT_DIR`] says; nothing is
//! downloaded at run time). The package's own C++ wrapper is not used: it is built for CPUs
//! with AVX-512 and dies of an illegal instruction on others, so the encoder/decoder loop is
//! here, on the package's ONNX Runtime library loaded at start.
//!
//! A fixed set of worker threads, each with its own encoder and decoder session (one ONNX
//! Runtime thread each), takes whole utterances from a bounded queue: recognition is CPU work
//! and never runs on the call tasks. A full queue is an error (the block fails over) rather
//! than a caller waiting on others' speech.

use crate::asr::{RecognizeFuture, SpeechRecognizer, Utterance};
use crate::flow::Recognized;
use ort::memory::Allocator;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// Where the installer puts the `moonshine_cpp` package (`[asr] moonshineDir` overrides it).
pub const DEFAULT_DIR: &str = "/usr/local/lib/callplane/moonshine/moonshine_cpp";
/// The ONNX Runtime library in the package; ort 2.0.0-rc.10 speaks its API (1.22).
const ORT_LIBRARY: &str = "libonnxruntime.so.1.22.1";
const ORT_API_VERSION: &str = "1.22.";
/// The model's files, under the package directory.
const MODEL_DIR: &str = "models/base-en";
/// The model's sample rate.
const MODEL_RATE: u32 = 16_000;
/// Start and end of transcript tokens.
const BOS: i64 = 1;
const EOS: i64 = 2;
/// Tokens decoded per second of audio at most (Moonshine's own limit is 6 per second; a
/// little more room for fast digit strings), plus a few for very short utterances.
const TOKENS_PER_SECOND: f64 = 6.5;
const EXTRA_TOKENS: usize = 6;
/// Utterances waiting for a worker at most; more are refused at once.
const QUEUE: usize = 32;
/// How long an utterance may take, waiting included, before the block fails over.
const RECOGNITION_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence kept after the last loud frame: the end-of-speech detector hands over 800 ms of
/// it, and long trailing silence makes the model end early or invent words.
const TRAILING_SILENCE: usize = 8_000 * 3 / 10;
/// RMS (of 32768) under which a 20 ms frame counts as silence when trimming.
const SILENCE_RMS: f64 = 260.0;

/// The recognizer: a queue into [`MoonshineRecognizer::workers`] threads.
#[derive(Debug)]
pub struct MoonshineRecognizer {
    jobs: SyncSender<Job>,
    workers: usize,
}

struct Job {
    /// 8 kHz 16-bit samples of one utterance.
    audio: Vec<i16>,
    queued: Instant,
    reply: oneshot::Sender<Result<Option<Recognized>, String>>,
}

impl MoonshineRecognizer {
    /// Checks the package directory `dir` (runtime library, model files, tokenizer) and starts
    /// `workers` threads; the error says what is missing or broken. Each worker loads its copy
    /// of the model when its first utterance comes ([`MoonshineRecognizer::warm_up`] loads
    /// them now), so a start that never hears speech costs no model memory.
    pub fn load(dir: &Path, workers: usize) -> Result<Self, String> {
        let library = dir.join(ORT_LIBRARY);
        check_runtime(&library)?;
        let model_dir = dir.join(MODEL_DIR);
        for file in ["encoder_model.ort", "decoder_model_merged.ort"] {
            let path = model_dir.join(file);
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
        }
        let tokenizer = Arc::new(Tokenizer::load(&model_dir.join("tokenizer.bin"))?);
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let workers = workers.max(1);
        for i in 0..workers {
            let worker = Worker {
                library: library.clone(),
                model_dir: model_dir.clone(),
                model: None,
                tokenizer: tokenizer.clone(),
            };
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("asr-{i}"))
                .spawn(move || worker.run(&queue))
                .map_err(|e| format!("starting a recognizer thread: {e}"))?;
        }
        Ok(MoonshineRecognizer { jobs, workers })
    }

    /// Loads every worker's model now (one short utterance each), so the first callers do
    /// not wait for it.
    pub async fn warm_up(&self) -> Result<(), String> {
        let mut waits = Vec::new();
        for _ in 0..self.workers {
            let jobs = self.jobs.clone();
            waits.push(tokio::spawn(async move {
                transcribe(&jobs, vec![0; 1_600]).await
            }));
        }
        for w in waits {
            w.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    /// Recognises one utterance of 8 kHz audio on a worker thread.
    pub async fn transcribe(&self, audio: Vec<i16>) -> Result<Option<Recognized>, String> {
        transcribe(&self.jobs, audio).await
    }
}

async fn transcribe(jobs: &SyncSender<Job>, audio: Vec<i16>) -> Result<Option<Recognized>, String> {
    let (reply, result) = oneshot::channel();
    let job = Job {
        audio,
        queued: Instant::now(),
        reply,
    };
    match jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(format!(
                "{QUEUE} utterances already wait for the recognizer"
            ))
        }
        Err(TrySendError::Disconnected(_)) => return Err("the recognizer has stopped".into()),
    }
    match tokio::time::timeout(RECOGNITION_TIMEOUT, result).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the recognizer dropped the utterance".into()),
        Err(_) => Err(format!("no result within {RECOGNITION_TIMEOUT:?}")),
    }
}

impl SpeechRecognizer for MoonshineRecognizer {
    fn name(&self) -> &'static str {
        "moonshine"
    }

    fn recognize(&self, language: &str, mut audio: Utterance) -> RecognizeFuture {
        let jobs = self.jobs.clone();
        let english = language.is_empty() || language.to_ascii_lowercase().starts_with("en");
        let language = language.to_owned();
        Box::pin(async move {
            if !english {
                return Err(format!(
                    "the built-in recognizer knows English only, not {language:?} (set [asr] url to a server with that language)"
                ));
            }
            let mut samples = Vec::with_capacity(8_000 * 4);
            while let Some(frame) = audio.recv().await {
                samples.extend_from_slice(&frame);
            }
            transcribe(&jobs, samples).await
        })
    }
}

/// Loads the library once by hand before ONNX Runtime's loader does: that one panics on a
/// missing or wrong library, and this says why instead.
fn check_runtime(library: &Path) -> Result<(), String> {
    if !library.is_file() {
        return Err(format!("{} does not exist", library.display()));
    }
    type GetApiBase = unsafe extern "C" fn() -> *const ApiBase;
    #[repr(C)]
    struct ApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: loading the ONNX Runtime library runs its initialisers, which have no
    // preconditions; the symbol's type is the one onnxruntime_c_api.h declares, and the
    // version string it returns is a static NUL-terminated string.
    let version = unsafe {
        let lib = libloading::Library::new(library)
            .map_err(|e| format!("loading {}: {e}", library.display()))?;
        let get: libloading::Symbol<GetApiBase> = lib
            .get(b"OrtGetApiBase\0")
            .map_err(|e| format!("{} is not ONNX Runtime: {e}", library.display()))?;
        let base = get();
        if base.is_null() {
            return Err(format!("{} gave no API", library.display()));
        }
        let v = std::ffi::CStr::from_ptr(((*base).get_version_string)())
            .to_string_lossy()
            .into_owned();
        // The library stays loaded for ONNX Runtime's own loader.
        std::mem::forget(lib);
        v
    };
    if !version.starts_with(ORT_API_VERSION) {
        return Err(format!(
            "{} is ONNX Runtime {version}, {ORT_API_VERSION}x is needed",
            library.display()
        ));
    }
    Ok(())
}

/// One recognizer thread: its model (loaded on its first utterance) and the shared tokenizer.
struct Worker {
    library: PathBuf,
    model_dir: PathBuf,
    model: Option<Model>,
    tokenizer: Arc<Tokenizer>,
}

impl Worker {
    fn run(mut self, queue: &Mutex<Receiver<Job>>) {
        loop {
            let job = {
                let Ok(queue) = queue.lock() else { return };
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if job.reply.is_closed() {
                continue; // the caller hung up or the block ended while it waited
            }
            let waited = job.queued.elapsed();
            let started = Instant::now();
            let result = self.recognize(&job.audio);
            debug!(
                seconds = job.audio.len() as f64 / 8_000.0,
                waited_ms = waited.as_millis() as u64,
                took_ms = started.elapsed().as_millis() as u64,
                "utterance recognised"
            );
            let _ = job.reply.send(result);
        }
    }

    fn recognize(&mut self, audio: &[i16]) -> Result<Option<Recognized>, String> {
        if self.model.is_none() {
            start_runtime(&self.library)?;
            self.model = Some(Model::load(&self.model_dir)?);
        }
        let Some(model) = self.model.as_mut() else {
            return Err("no model".into());
        };
        let (tokens, confidence) = model
            .transcribe(&prepare(audio))
            .map_err(|e| format!("recognizing: {e}"))?;
        let text = normalise(&self.tokenizer.decode(&tokens));
        Ok((!text.is_empty()).then_some(Recognized {
            text,
            confidence: Some(confidence),
        }))
    }
}

/// Starts ONNX Runtime once per process, on the library [`check_runtime`] accepted.
fn start_runtime(library: &Path) -> Result<(), String> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            ort::init_from(library.display().to_string())
                .with_name("callplane-asr")
                .commit()
                .map(|_| ())
                .map_err(|e| format!("starting ONNX Runtime: {e}"))
        })
        .clone()
}

/// The model writes sentences ("One, two, three, four."); a COLLECT_SPEECH variable holds
/// words as a telephony recognizer gives them (and as Vosk does): lower case, punctuation
/// dropped, apostrophes and hyphens inside words kept ("one two three four", "don't").
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inside_word = i > 0
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
            && chars[i - 1].is_alphanumeric();
        if c.is_alphanumeric() || ((c == '\'' || c == '-') && inside_word) {
            out.extend(c.to_lowercase());
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    out.trim_end().to_owned()
}

/// 8 kHz samples → the model's input: trailing silence cut to [`TRAILING_SILENCE`], then
/// 16 kHz floats.
fn prepare(audio: &[i16]) -> Vec<f32> {
    let frames = audio.chunks(160);
    let mut last_loud = 0;
    for (i, f) in frames.enumerate() {
        let rms = (f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
        if rms >= SILENCE_RMS {
            last_loud = ((i + 1) * 160).min(audio.len());
        }
    }
    let end = (last_loud + TRAILING_SILENCE).min(audio.len());
    let input: Vec<f32> = audio[..end]
        .iter()
        .map(|&s| f32::from(s) / 32768.0)
        .collect();
    callplane_media::wav::resample_rubato(&input, 8_000, MODEL_RATE)
}

/// One encoder and one decoder session, and the decoder's cache layout.
struct Model {
    encoder: Session,
    decoder: Session,
    layers: usize,
    heads: usize,
    head_dim: usize,
}

impl Model {
    fn load(dir: &Path) -> Result<Model, String> {
        let session = |name: &str| -> Result<Session, String> {
            let path: PathBuf = dir.join(name);
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
            Session::builder()
                .and_then(|b| b.with_intra_threads(1))
                .and_then(|b| b.with_inter_threads(1))
                .and_then(|b| b.commit_from_file(&path))
                .map_err(|e| format!("loading {}: {e}", path.display()))
        };
        let encoder = session("encoder_model.ort")?;
        let decoder = session("decoder_model_merged.ort")?;
        // The cache's shape comes from the model: `past_key_values.N.decoder.key` is
        // [batch, heads, length, head_dim] for each of the N layers.
        let layers = decoder
            .inputs
            .iter()
            .filter(|i| i.name.ends_with(".decoder.key"))
            .count();
        let dims = decoder
            .inputs
            .iter()
            .find(|i| i.name == "past_key_values.0.decoder.key")
            .and_then(|i| i.input_type.tensor_shape().map(|s| s.to_vec()))
            .ok_or("the decoder has no past_key_values.0.decoder.key input")?;
        let (heads, head_dim) = match dims[..] {
            [_, h, _, d] if h > 0 && d > 0 => (h as usize, d as usize),
            _ => return Err(format!("unexpected cache shape {dims:?}")),
        };
        Ok(Model {
            encoder,
            decoder,
            layers,
            heads,
            head_dim,
        })
    }

    /// Greedy decoding of 16 kHz audio: the tokens (without start and end) and the mean
    /// probability the model gave the tokens it chose.
    fn transcribe(&mut self, audio: &[f32]) -> ort::Result<(Vec<i64>, f64)> {
        let max_tokens = (audio.len() as f64 / f64::from(MODEL_RATE) * TOKENS_PER_SECOND) as usize
            + EXTRA_TOKENS;
        let input = Tensor::from_array(([1usize, audio.len()], audio.to_vec()))?;
        let hidden: DynValue = {
            let mut out = self.encoder.run(ort::inputs!["input_values" => input])?;
            out.remove("last_hidden_state")
                .ok_or_else(|| ort::Error::new("the encoder gave no last_hidden_state"))?
        };
        let names: Vec<(String, String)> = (0..self.layers)
            .flat_map(|l| {
                [
                    "decoder.key",
                    "decoder.value",
                    "encoder.key",
                    "encoder.value",
                ]
                .map(move |k| {
                    (
                        format!("past_key_values.{l}.{k}"),
                        format!("present.{l}.{k}"),
                    )
                })
            })
            .collect();
        let mut cache: Vec<DynValue> = Vec::with_capacity(names.len());
        for _ in &names {
            // An empty cache (no past tokens), made by the runtime's allocator: tensors over
            // Rust data may not have a zero dimension.
            let empty = Tensor::<f32>::new(
                &Allocator::default(),
                vec![1i64, self.heads as i64, 0, self.head_dim as i64],
            )?;
            cache.push(empty.into_dyn());
        }
        let mut tokens = Vec::new();
        let mut prob_sum = 0.0;
        let mut last = BOS;
        for step in 0..max_tokens {
            let mut inputs: Vec<(Cow<str>, SessionInputValue)> =
                Vec::with_capacity(names.len() + 3);
            inputs.push((
                "input_ids".into(),
                Tensor::from_array(([1usize, 1], vec![last]))?.into(),
            ));
            inputs.push(("encoder_hidden_states".into(), hidden.view().into()));
            inputs.push((
                "use_cache_branch".into(),
                Tensor::from_array(([1usize], vec![step > 0]))?.into(),
            ));
            for ((past, _), value) in names.iter().zip(&cache) {
                inputs.push((past.as_str().into(), value.view().into()));
            }
            let mut out = self.decoder.run(inputs)?;
            let (token, prob) = {
                let (shape, logits) = out["logits"].try_extract_tensor::<f32>()?;
                let vocab = shape.last().copied().unwrap_or(0) as usize;
                if vocab == 0 || logits.len() < vocab {
                    return Err(ort::Error::new("empty logits"));
                }
                pick(&logits[logits.len() - vocab..])
            };
            // The decoder's cache grows every step; the encoder's is computed on the first
            // step and then passed back unchanged.
            for (i, (_, present)) in names.iter().enumerate() {
                if step > 0 && present.contains(".encoder.") {
                    continue;
                }
                if let Some(v) = out.remove(present) {
                    cache[i] = v;
                }
            }
            if token == EOS {
                break;
            }
            tokens.push(token);
            prob_sum += prob;
            last = token;
        }
        let confidence = if tokens.is_empty() {
            0.0
        } else {
            prob_sum / tokens.len() as f64
        };
        Ok((tokens, confidence))
    }
}

/// The most likely token and its probability (softmax of the logits).
fn pick(logits: &[f32]) -> (i64, f64) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            best = i;
            max = l;
        }
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (best as i64, 1.0 / sum)
}

/// Moonshine's `tokenizer.bin`: for each token id in order, one length byte and the token's
/// bytes (SentencePiece pieces, `▁` for a space, `<0xNN>`-style byte tokens as raw bytes).
#[derive(Debug)]
struct Tokenizer {
    tokens: Vec<Vec<u8>>,
}

impl Tokenizer {
    fn load(path: &Path) -> Result<Tokenizer, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Tokenizer::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<Tokenizer, String> {
        let mut tokens = Vec::with_capacity(32_768);
        let mut i = 0;
        while i < bytes.len() {
            let n = usize::from(bytes[i]);
            i += 1;
            let Some(t) = bytes.get(i..i + n) else {
                return Err(format!("token {} runs past the end", tokens.len()));
            };
            tokens.push(t.to_vec());
            i += n;
        }
        if tokens.len() <= EOS as usize {
            return Err("too few tokens".into());
        }
        Ok(Tokenizer { tokens })
    }

    /// The text of `ids`: special tokens (`<…>` below id 3) dropped, `▁` as a space.
    fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id <= EOS {
                continue;
            }
            match self.tokens.get(id as usize) {
                Some(t) => bytes.extend_from_slice(t),
                None => warn!(id, "token outside the vocabulary"),
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace('\u{2581}', " ")
            .trim()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_reads_length_prefixed_tokens_and_spaces() {
        let mut bin = Vec::new();
        for t in [
            "<unk>",
            "<s>",
            "</s>",
            "\u{2581}One",
            ",",
            "\u{2581}two",
            ".",
        ] {
            bin.push(t.len() as u8);
            bin.extend_from_slice(t.as_bytes());
        }
        let tok = Tokenizer::parse(&bin).unwrap();
        assert_eq!(tok.decode(&[1, 3, 4, 5, 6, 2]), "One, two.");
        assert!(Tokenizer::parse(&[5, b'a']).is_err());
    }

    #[test]
    fn normalise_gives_plain_lower_case_words() {
        assert_eq!(normalise("One, two, three, four."), "one two three four");
        assert_eq!(normalise("Yes."), "yes");
        assert_eq!(
            normalise("I don't know - maybe to-morrow?"),
            "i don't know maybe to-morrow"
        );
        assert_eq!(normalise("4, 1, 1"), "4 1 1");
        assert_eq!(normalise("..."), "");
    }

    #[test]
    fn pick_finds_the_most_likely_token() {
        let (t, p) = pick(&[0.0, 5.0, 1.0]);
        assert_eq!(t, 1);
        assert!(p > 0.9 && p < 1.0, "{p}");
    }

    #[test]
    fn prepare_cuts_long_trailing_silence_and_doubles_the_rate() {
        let mut audio: Vec<i16> = (0..8_000)
            .map(|i| if i % 2 == 0 { 3000 } else { -3000 })
            .collect();
        audio.extend(std::iter::repeat_n(0, 8_000)); // 1 s of silence after 1 s of sound
        let out = prepare(&audio);
        assert_eq!(out.len(), (8_000 + TRAILING_SILENCE) * 2);
    }
}
