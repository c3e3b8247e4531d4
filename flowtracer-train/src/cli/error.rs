//! The one error type of the subcommands: a one-line message and the exit code the binary
//! returns with it.

use core::fmt;

use crate::error::{ConfigError, TrainError};

/// The exit code of a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCode {
    /// 1: a run failed after it started (a non-finite loss, a checkpoint that cannot be
    /// written).
    Failure = 1,
    /// 2: bad input (a knob out of range, a missing or malformed file, an unwritable
    /// `--out` of `score`/`explain`).
    BadInput = 2,
}

/// A failed command: a one-line message for the user and its [`ExitCode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    code: ExitCode,
    message: String,
}

impl CliError {
    /// An error with this code and message (line breaks become spaces: the message is one
    /// line whatever a lower layer wrote).
    #[must_use]
    pub fn new(code: ExitCode, message: impl fmt::Display) -> Self {
        let message = message.to_string().replace(['\n', '\r'], " ");
        Self { code, message }
    }

    /// Bad input: exit code 2.
    #[must_use]
    pub fn bad_input(message: impl fmt::Display) -> Self {
        Self::new(ExitCode::BadInput, message)
    }

    /// A failed run: exit code 1.
    #[must_use]
    pub fn failure(message: impl fmt::Display) -> Self {
        Self::new(ExitCode::Failure, message)
    }

    /// The exit code the binary returns.
    #[must_use]
    pub fn code(&self) -> ExitCode {
        self.code
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl core::error::Error for CliError {}

/// A bad knob is bad input.
impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        Self::bad_input(e)
    }
}

/// A bad knob found by the trainer and a damaged checkpoint are bad input; everything else
/// stops a started run.
impl From<TrainError> for CliError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Config(_) | TrainError::Damaged(_) => Self::bad_input(e),
            _ => Self::failure(e),
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FileError;

    #[test]
    fn the_code_follows_the_cause_and_the_message_is_one_line() {
        let knob = CliError::from(ConfigError::knob("num_generations must be >= 2"));
        assert_eq!(knob.code(), ExitCode::BadInput);
        assert_eq!(knob.message(), "num_generations must be >= 2");
        let late_knob = CliError::from(TrainError::Config(ConfigError::knob("lr")));
        assert_eq!(late_knob.code(), ExitCode::BadInput);
        let nan = CliError::from(TrainError::NonFiniteLoss {
            step: 3,
            detail: "loss = NaN".into(),
        });
        assert_eq!(nan.code(), ExitCode::Failure);
        assert!(nan.message().contains("step 3"));
        let io = CliError::from(TrainError::File(FileError::new("write", "x", "disk\nfull")));
        assert_eq!(io.code(), ExitCode::Failure);
        assert_eq!(io.message(), "cannot write x: disk full");
        assert_eq!(
            std::process::ExitCode::from(ExitCode::BadInput),
            std::process::ExitCode::from(2)
        );
    }
}
