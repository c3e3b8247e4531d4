//! The trainer's errors: a bad knob ([`ConfigError`]), a file that could not be read or
//! written ([`FileError`]), and what stops a run ([`TrainError`]).

use core::fmt;
use std::path::PathBuf;

/// A knob outside its domain, from the command line, a config or a checkpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A knob of the trainer; the message names the knob and what it must be.
    Knob(String),
    /// The core rejected a config built from the knobs (e.g. `rho` outside `[0, 1]`).
    Core(flowtracer_core::Error),
}

impl ConfigError {
    /// A bad knob of the trainer, with a message naming it.
    pub fn knob(message: impl Into<String>) -> Self {
        ConfigError::Knob(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Knob(m) => f.write_str(m),
            ConfigError::Core(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ConfigError::Knob(_) => None,
            ConfigError::Core(e) => Some(e),
        }
    }
}

impl From<flowtracer_core::Error> for ConfigError {
    fn from(e: flowtracer_core::Error) -> Self {
        ConfigError::Core(e)
    }
}

/// A file (or directory) operation that failed, with the path and the cause.
#[derive(Debug)]
pub struct FileError {
    /// What was being done, as a verb phrase completed by the path ("write", "read",
    /// "save the model to", ...).
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause (an `std::io::Error`, a burn record error, a JSON error, ...).
    pub source: Box<dyn core::error::Error + Send + Sync>,
}

impl FileError {
    /// The failure of `action` on `path`.
    pub fn new(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<Box<dyn core::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            action,
            path: path.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.source
        )
    }
}

impl core::error::Error for FileError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Errors that stop a run.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrainError {
    /// The loss or a gradient coefficient was not finite.
    NonFiniteLoss {
        /// The 1-based step.
        step: usize,
        /// What was not finite.
        detail: String,
    },
    /// The core rejected the batch (a bug in the trainer's shapes).
    Core(flowtracer_core::Error),
    /// A bad knob.
    Config(ConfigError),
    /// A checkpoint, model or output file could not be read or written.
    File(FileError),
    /// The run diverged: a non-finite loss, coefficient, parameter or optimizer state at
    /// `step`. Nothing of that step was saved.
    Diverged {
        /// The 1-based step.
        step: usize,
        /// What was not finite.
        detail: String,
        /// The last checkpoint of the run and its step (finite: nothing non-finite is
        /// saved), if one was written.
        checkpoint: Option<(PathBuf, usize)>,
    },
    /// A checkpoint to resume from is missing, incomplete or malformed (bad input: the run
    /// directory is left as it was).
    Damaged(FileError),
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::NonFiniteLoss { step, detail } => write!(
                f,
                "non-finite loss at step {step} ({detail}): stopping; lower the learning rate or resume from an earlier checkpoint"
            ),
            TrainError::Diverged {
                step,
                detail,
                checkpoint,
            } => {
                write!(
                    f,
                    "training diverged at step {step} ({detail}); nothing of that step was saved; "
                )?;
                match checkpoint {
                    Some((path, at)) => write!(
                        f,
                        "the last checkpoint, {} (step {at}), holds finite parameters and optimizer state: resume from it with a lower --lr",
                        path.display()
                    ),
                    None => f.write_str(
                        "no checkpoint was written before it: start again with a lower --lr",
                    ),
                }
            }
            TrainError::Core(e) => write!(f, "flowtracer-core rejected the batch: {e}"),
            TrainError::Config(e) => write!(f, "bad configuration: {e}"),
            TrainError::File(e) | TrainError::Damaged(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for TrainError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            TrainError::NonFiniteLoss { .. } | TrainError::Diverged { .. } => None,
            TrainError::Core(e) => Some(e),
            TrainError::Config(e) => Some(e),
            TrainError::File(e) | TrainError::Damaged(e) => Some(e),
        }
    }
}

impl From<flowtracer_core::Error> for TrainError {
    fn from(e: flowtracer_core::Error) -> Self {
        TrainError::Core(e)
    }
}

impl From<ConfigError> for TrainError {
    fn from(e: ConfigError) -> Self {
        TrainError::Config(e)
    }
}

impl From<FileError> for TrainError {
    fn from(e: FileError) -> Self {
        TrainError::File(e)
    }
}
