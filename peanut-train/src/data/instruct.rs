//! Causal-LM instruction data in the LLM-Adapters format (`commonsense_170k.json`,
//! `MetaMathQA`): the prompt template, response-only labels with a cutoff, and answer extraction
//! for the eight commonsense tasks.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One instruction example: `instruction`, optional `input`, and the reference `output`
/// (LLM-Adapters also stores `answer`, which training ignores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// The task statement.
    pub instruction: String,
    /// Optional context.
    #[serde(default)]
    pub input: String,
    /// The target response (empty when the file has none; [`read_training`] refuses that).
    #[serde(default)]
    pub output: String,
    /// The short answer, when the file has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// An example as the file spells it: `input` and `output` may be absent or `null`, `answer`
/// may be a number (math datasets) or a boolean.
#[derive(Deserialize)]
struct RawInstruction {
    instruction: String,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    answer: Option<serde_json::Value>,
}

/// Where an example sits in its file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Index in a JSON array (0-based).
    Element(usize),
    /// Line of a JSON-lines file (1-based).
    Line(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Element(index) => write!(f, "example {index} (0-based)"),
            Self::Line(line) => write!(f, "the example on line {line}"),
        }
    }
}

/// Reads a JSON array (or JSON-lines file) of [`Instruction`]s; `output` may be missing (test
/// files are compared by `answer`). A UTF-8 byte-order mark is skipped; an error in a JSON-lines
/// file names its line.
pub fn read(path: &Path) -> Result<Vec<Instruction>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    parse(&bytes, path, false)
}

/// Reads training data as [`read`] does, and also requires every example to have an `output`
/// (the response trained on); the error names the first example without one.
pub fn read_training(path: &Path) -> Result<Vec<Instruction>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    parse(&bytes, path, true)
}

/// Parses the bytes of an instruction file (JSON array or JSON lines) that `path` names in
/// errors; with `require_output`, an example without `output` is an error.
pub fn parse(bytes: &[u8], path: &Path, require_output: bool) -> Result<Vec<Instruction>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    let raw: Vec<(Place, RawInstruction)> = if text.trim_start().starts_with('[') {
        let examples: Vec<RawInstruction> =
            serde_json::from_str(&text).map_err(|source| peanut::FileError::json(path, source))?;
        examples
            .into_iter()
            .enumerate()
            .map(|(index, example)| (Place::Element(index), example))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                serde_json::from_str(line)
                    .map(|example| (Place::Line(number + 1), example))
                    .map_err(|source| TrainError::JsonLine {
                        path: path.to_path_buf(),
                        line: number + 1,
                        source,
                    })
            })
            .collect::<Result<_>>()?
    };
    if raw.is_empty() {
        return Err(TrainError::malformed(path, "holds no examples"));
    }
    raw.into_iter()
        .map(|(place, example)| {
            if require_output && example.output.is_none() {
                return Err(TrainError::malformed(
                    path,
                    format!(
                        "{place} has no `output` field: training needs the response to learn \
                         (instruction: {:?})",
                        example.instruction.chars().take(60).collect::<String>()
                    ),
                ));
            }
            let answer = match example.answer {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(text)) => Some(text),
                Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Some(value.to_string())
                }
                Some(other) => {
                    return Err(TrainError::malformed(
                        path,
                        format!("{place} has an `answer` that is not text: {other}"),
                    ));
                }
            };
            Ok(Instruction {
                instruction: example.instruction,
                input: example.input.unwrap_or_default(),
                output: example.output.unwrap_or_default(),
                answer,
            })
        })
        .collect()
}

/// The LLM-Adapters (Alpaca) prompt up to and including `### Response:\n`; the response follows.
pub fn prompt(example: &Instruction) -> String {
    if example.input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\n{}\n\n### Response:\n",
            example.instruction
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n",
            example.instruction, example.input
        )
    }
}

/// Token ids of one example and which of them carry loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Prompt then response (then EOS when it fits), at most `cutoff` tokens.
    pub input_ids: Vec<u32>,
    /// `true` where the next-token loss applies: response tokens (and EOS) only.
    pub loss_mask: Vec<bool>,
}

impl Tokenized {
    /// Whether some token after the first carries loss (the first has nothing to be predicted
    /// from, so an example without such a token teaches nothing).
    pub fn has_loss(&self) -> bool {
        self.loss_mask.iter().skip(1).any(|&m| m)
    }
}

/// Tokenizes `prompt + output` with `tokenize`, truncates to `cutoff` tokens, appends `eos`
/// when there is room, and masks the prompt out of the loss (the paper trains on responses
/// only) — as LLM-Adapters' `finetune.py` does with `train_on_inputs=False`.
///
/// # Errors
/// Whatever `tokenize` returns.
pub fn tokenize<E>(
    example: &Instruction,
    tokenize: impl Fn(&str) -> std::result::Result<Vec<u32>, E>,
    eos: Option<u32>,
    cutoff: usize,
) -> std::result::Result<Tokenized, E> {
    let prompt = prompt(example);
    let prompt_len = tokenize(&prompt)?.len();
    let mut input_ids = tokenize(&format!("{prompt}{}", example.output))?;
    input_ids.truncate(cutoff);
    if let Some(eos) = eos
        && input_ids.len() < cutoff
        && input_ids.last() != Some(&eos)
    {
        input_ids.push(eos);
    }
    let loss_mask = (0..input_ids.len()).map(|i| i >= prompt_len).collect();
    Ok(Tokenized {
        input_ids,
        loss_mask,
    })
}

/// How [`tokenize_all`] prepares examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Most tokens per example (LLM-Adapters' `cutoff_len`).
    pub cutoff: usize,
    /// The end-of-sequence id appended after the response, if any.
    pub eos: Option<u32>,
    /// Put the loss on the prompt too (LLM-Adapters' `train_on_inputs`; the paper does not).
    pub train_on_inputs: bool,
}

/// Tokenizes `examples` on every core, keeping their order, and drops those that keep no
/// loss-carrying token within the cutoff. Returns the kept examples and how many were dropped.
///
/// # Errors
/// The first error of `tokenize`.
pub fn tokenize_all<E: Send>(
    examples: &[Instruction],
    tokenize_text: impl Fn(&str) -> std::result::Result<Vec<u32>, E> + Sync,
    options: TokenizeOptions,
) -> std::result::Result<(Vec<Tokenized>, usize), E> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = examples.len().div_ceil(threads).max(1);
    let tokenize_text = &tokenize_text;
    let parts: Vec<std::result::Result<Vec<Tokenized>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = examples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|example| {
                            let mut tokens =
                                tokenize(example, tokenize_text, options.eos, options.cutoff)?;
                            if options.train_on_inputs {
                                tokens.loss_mask.fill(true);
                            }
                            Ok(tokens)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("tokenizer thread panicked"))
            .collect()
    });
    let mut kept = Vec::with_capacity(examples.len());
    for part in parts {
        kept.extend(part?.into_iter().filter(Tokenized::has_loss));
    }
    let dropped = examples.len() - kept.len();
    Ok((kept, dropped))
}

/// The commonsense-reasoning tasks of the paper and their answer formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Task {
    /// BoolQ: `true` / `false`.
    Boolq,
    /// PIQA: `solution1` / `solution2`.
    Piqa,
    /// Social IQa: `answer1`–`answer3`.
    SocialIQa,
    /// HellaSwag: `ending1`–`ending4`.
    Hellaswag,
    /// WinoGrande: `option1` / `option2`.
    Winogrande,
    /// ARC-Easy: `answer1`–`answer5`.
    ArcEasy,
    /// ARC-Challenge: `answer1`–`answer5`.
    ArcChallenge,
    /// OpenBookQA: `answer1`–`answer5`.
    Openbookqa,
}

impl Task {
    /// Every task, in the paper's table order.
    pub const ALL: [Task; 8] = [
        Task::Boolq,
        Task::Piqa,
        Task::SocialIQa,
        Task::Hellaswag,
        Task::Winogrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Openbookqa,
    ];

    /// The answers a response may contain.
    pub fn choices(self) -> &'static [&'static str] {
        match self {
            Task::Boolq => &["true", "false"],
            Task::Piqa => &["solution1", "solution2"],
            Task::SocialIQa => &["answer1", "answer2", "answer3", "answer4", "answer5"],
            Task::Hellaswag => &["ending1", "ending2", "ending3", "ending4"],
            Task::Winogrande => &["option1", "option2"],
            Task::ArcEasy | Task::ArcChallenge | Task::Openbookqa => {
                &["answer1", "answer2", "answer3", "answer4", "answer5"]
            }
        }
    }

    /// The LLM-Adapters dataset name (`boolq`, `social_i_qa`, `ARC-Easy`, …).
    pub fn name(self) -> &'static str {
        match self {
            Task::Boolq => "boolq",
            Task::Piqa => "piqa",
            Task::SocialIQa => "social_i_qa",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::ArcEasy => "ARC-Easy",
            Task::ArcChallenge => "ARC-Challenge",
            Task::Openbookqa => "openbookqa",
        }
    }

    /// The task of an evaluation file, from its name (`boolq.json`) or, failing that, its
    /// directory's (`boolq/test.json`, LLM-Adapters' layout).
    ///
    /// # Errors
    /// [`TrainError::UnknownTask`] naming the file when neither name is a task.
    pub fn from_path(path: &Path) -> Result<Self> {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let parent = path
            .parent()
            .and_then(Path::file_name)
            .map(|s| s.to_string_lossy().into_owned());
        let found = [&stem, &parent]
            .into_iter()
            .flatten()
            .find_map(|name| Self::from_dataset_name(name));
        found.ok_or_else(|| TrainError::UnknownTask {
            path: path.to_path_buf(),
            name: stem.unwrap_or_default(),
            known: Self::ALL.map(Self::name).join(", "),
        })
    }

    /// The task for an LLM-Adapters dataset directory name (`boolq`, `social_i_qa`,
    /// `ARC-Easy`, …).
    pub fn from_dataset_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase().replace(['-', '_'], "");
        Some(match name.as_str() {
            "boolq" => Task::Boolq,
            "piqa" => Task::Piqa,
            "socialiqa" | "siqa" => Task::SocialIQa,
            "hellaswag" => Task::Hellaswag,
            "winogrande" => Task::Winogrande,
            "arceasy" | "arce" => Task::ArcEasy,
            "arcchallenge" | "arcc" => Task::ArcChallenge,
            "openbookqa" | "obqa" => Task::Openbookqa,
            _ => return None,
        })
    }

    /// The answer in a generated response: the earliest occurrence of any of
    /// [`Task::choices`] (as LLM-Adapters' `extract_answer` takes the first regex match), or
    /// `None`.
    pub fn extract_answer(self, response: &str) -> Option<&'static str> {
        let response = response.trim();
        self.choices()
            .iter()
            .filter_map(|choice| response.find(choice).map(|at| (at, *choice)))
            // Earliest start; at the same start the longer choice wins.
            .min_by_key(|(at, choice)| (*at, usize::MAX - choice.len()))
            .map(|(_, choice)| choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(input: &str) -> Instruction {
        Instruction {
            instruction: "Is water wet?".into(),
            input: input.into(),
            output: "the correct answer is true".into(),
            answer: Some("true".into()),
        }
    }

    #[test]
    fn prompt_has_the_input_section_only_with_input() {
        assert!(!prompt(&example("")).contains("### Input:"));
        assert!(prompt(&example("ctx")).contains("### Input:\nctx\n\n### Response:\n"));
    }

    #[test]
    fn loss_covers_response_tokens_only_and_cutoff_applies() {
        // One token per character: easy to count.
        let chars = |s: &str| s.chars().map(|c| c as u32).collect::<Vec<u32>>();
        let ex = example("");
        let prompt_len = prompt(&ex).chars().count();
        let chars = |s: &str| Ok::<_, ()>(chars(s));
        let full = tokenize(&ex, chars, Some(0), 10_000).unwrap();
        assert_eq!(full.input_ids.len(), prompt_len + ex.output.len() + 1);
        assert_eq!(
            full.loss_mask.iter().filter(|m| **m).count(),
            ex.output.len() + 1
        );
        assert!(!full.loss_mask[prompt_len - 1] && full.loss_mask[prompt_len]);
        let cut = tokenize(&ex, chars, Some(0), prompt_len + 3).unwrap();
        assert_eq!(cut.input_ids.len(), prompt_len + 3);
        assert_eq!(cut.loss_mask.iter().filter(|m| **m).count(), 3);
        // Cut inside the prompt: nothing to learn, dropped by tokenize_all.
        let options = TokenizeOptions {
            cutoff: prompt_len - 1,
            eos: Some(0),
            train_on_inputs: false,
        };
        let (kept, dropped) = tokenize_all(std::slice::from_ref(&ex), chars, options).unwrap();
        assert!(kept.is_empty() && dropped == 1);
        let options = TokenizeOptions {
            train_on_inputs: true,
            ..options
        };
        let (kept, _) = tokenize_all(&[ex.clone(), ex], chars, options).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept[0].loss_mask.iter().all(|&m| m));
    }

    #[test]
    fn answers_are_extracted_per_task() {
        assert_eq!(
            Task::Boolq.extract_answer("the correct answer is false"),
            Some("false")
        );
        assert_eq!(
            Task::Piqa.extract_answer("solution2 is better than solution1"),
            Some("solution2")
        );
        assert_eq!(Task::Hellaswag.extract_answer("ending3"), Some("ending3"));
        assert_eq!(
            Task::Winogrande.extract_answer("I pick option1."),
            Some("option1")
        );
        assert_eq!(
            Task::ArcChallenge.extract_answer("answer4"),
            Some("answer4")
        );
        assert_eq!(Task::Openbookqa.extract_answer("no idea"), None);
        assert_eq!(
            Task::from_dataset_name("ARC-Challenge"),
            Some(Task::ArcChallenge)
        );
        assert_eq!(
            Task::from_dataset_name("social_i_qa"),
            Some(Task::SocialIQa)
        );
        for task in Task::ALL {
            assert_eq!(Task::from_dataset_name(task.name()), Some(task));
        }
        assert_eq!(
            Task::from_path(Path::new("dataset/piqa/test.json")).unwrap(),
            Task::Piqa
        );
        assert_eq!(
            Task::from_path(Path::new("x/winogrande.json")).unwrap(),
            Task::Winogrande
        );
        let err = Task::from_path(Path::new("x/mystery.json")).unwrap_err();
        assert!(err.to_string().contains("mystery") && err.to_string().contains("--task"));
    }
}
