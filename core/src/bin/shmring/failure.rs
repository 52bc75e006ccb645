//! What a failed command tells its caller: a status name (the C ABI's `SHMRING_*` in lower
//! case), an exit code, and, with `--json`, the error as JSON.

/// The exit codes, as `shmring --help` lists them. Keep in step with [`Failure::code`] and the
/// README.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success (also when standard output closes early, as with `| head -1`)
  1  any other failure (status io_error, corrupted, incompatible, closed, error, ...)
  2  usage: the arguments are not valid (status usage)
  3  not_found: no such channel
  4  already_exists: a channel of that name exists
  5  permission_denied: the channel's mode (or the socket's) does not admit you
  6  busy: a limit of the coordinator is reached, or the channel admits no more participants
  7  invalid_argument: the coordinator refused a name, a shape or a size
  8  unavailable: no coordinator answers at the socket

With --json, a failure prints {\"error\": {\"status\": STATUS, \"message\": TEXT}} on standard
output (and nothing on standard error) and exits with the code above.";

/// A failed command.
pub struct Failure {
    /// `not_found`, `busy`, …: the status name.
    pub status: &'static str,
    /// What happened and what to do, in words.
    pub message: String,
}

impl Failure {
    /// A failure of the library, named after its variant.
    pub fn of(e: &shmring::Error) -> Failure {
        use shmring::Error as E;
        let status = match e {
            E::WouldBlock(_) => "would_block",
            E::TimedOut(_) => "timed_out",
            E::Closed(_) => "closed",
            E::FrameTooLarge { .. } => "frame_too_large",
            E::BufferTooSmall { .. } => "buffer_too_small",
            E::Corrupted(_) => "corrupted",
            E::Incompatible(_) => "incompatible",
            E::Busy(_) => "busy",
            E::NotFound(_) => "not_found",
            E::AlreadyExists(_) => "already_exists",
            E::PermissionDenied(_) => "permission_denied",
            E::InvalidArgument(_) => "invalid_argument",
            E::Unavailable(_) => "unavailable",
            E::Io { .. } => "io_error",
            _ => "error",
        };
        Failure {
            status,
            message: e.to_string(),
        }
    }

    /// A failure with no library error behind it (the bench's).
    pub fn other(message: String) -> Failure {
        Failure {
            status: "error",
            message,
        }
    }

    /// The exit code of [`EXIT_CODES`].
    pub fn code(&self) -> u8 {
        match self.status {
            "usage" => 2,
            "not_found" => 3,
            "already_exists" => 4,
            "permission_denied" => 5,
            "busy" => 6,
            "invalid_argument" => 7,
            "unavailable" => 8,
            _ => 1,
        }
    }

    /// `{"error": {"status": …, "message": …}}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "status": self.status, "message": self.message } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_is_the_one_given() {
        for (status, code) in [
            ("usage", 2),
            ("not_found", 3),
            ("already_exists", 4),
            ("permission_denied", 5),
            ("busy", 6),
            ("invalid_argument", 7),
            ("unavailable", 8),
        ] {
            let f = Failure {
                status,
                message: String::new(),
            };
            assert_eq!(f.code(), code);
            assert!(
                EXIT_CODES.contains(&format!("  {code}  {status}")),
                "{status} is listed with {code}"
            );
        }
        let f = Failure::of(&shmring::Error::NotFound("x".into()));
        assert_eq!((f.status, f.code()), ("not_found", 3));
        assert_eq!(Failure::other("bench".into()).code(), 1);
    }
}
