//! Status codes, the calling thread's last error, and the panic boundary every entry point
//! runs inside.

use shmring_core::Error;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a fallible function returns: `SHMRING_OK` (0) or one of the `SHMRING_*` codes below.
/// `SHMRING_WOULD_BLOCK` and `SHMRING_TIMED_OUT` are back-pressure (try again later), the others
/// failures; `shmring_last_error()` says what happened in words.
pub type shmring_status = i32;

/// Success.
pub const SHMRING_OK: shmring_status = 0;
/// The ring is full (send, claim) or empty (recv, read) and the call was not to wait.
pub const SHMRING_WOULD_BLOCK: shmring_status = 1;
/// The call waited for its whole timeout.
pub const SHMRING_TIMED_OUT: shmring_status = 2;
/// The channel was deleted, or its stream finished (`shmring_producer_finish`): a consumer got
/// everything that was in it; a deleted channel's producer (or a finished one) sends nothing
/// more.
pub const SHMRING_CLOSED: shmring_status = 3;
/// An argument is NULL, out of range or malformed, or the call does not fit the handle's state
/// (a commit without a claim, a read while a frame is held).
pub const SHMRING_INVALID_ARGUMENT: shmring_status = 4;
/// No channel (or coordinator socket) of that name.
pub const SHMRING_NOT_FOUND: shmring_status = 5;
/// A channel of that name exists already, or a coordinator already serves that socket or
/// namespace.
pub const SHMRING_ALREADY_EXISTS: shmring_status = 6;
/// The channel's mode (or the socket's) does not admit this user.
pub const SHMRING_PERMISSION_DENIED: shmring_status = 7;
/// The channel admits no more producers or consumers (an SPSC channel admits one of each).
pub const SHMRING_BUSY: shmring_status = 8;
/// The frame is longer than the channel's max_frame_size.
pub const SHMRING_FRAME_TOO_LARGE: shmring_status = 9;
/// The buffer cannot hold the next frame, which stays unread; its size is in `*out_len`.
pub const SHMRING_BUFFER_TOO_SMALL: shmring_status = 10;
/// The shared memory holds values that break the protocol: another process wrote garbage.
pub const SHMRING_CORRUPTED: shmring_status = 11;
/// A segment or coordinator of another version of shmring (or not shmring at all).
pub const SHMRING_INCOMPATIBLE: shmring_status = 12;
/// No coordinator answers, or a segment is not ready.
pub const SHMRING_UNAVAILABLE: shmring_status = 13;
/// An operating-system call failed.
pub const SHMRING_IO_ERROR: shmring_status = 14;
/// A bug inside libshmring panicked; the call did nothing more. Please report it.
pub const SHMRING_PANIC: shmring_status = 15;

/// The calling thread's last error: a static text for back-pressure (no allocation on a
/// polling path), an owned one otherwise.
enum LastError {
    Static(&'static CStr),
    Owned(CString),
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const { RefCell::new(LastError::Static(c"")) };
}

fn set_last_error(e: LastError) {
    LAST_ERROR.with(|l| *l.borrow_mut() = e);
}

/// The text of the calling thread's last error; valid until its next failing call.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| match &*l.borrow() {
        LastError::Static(s) => s.as_ptr(),
        // The CString lives in the thread-local until replaced: the pointer stays valid until
        // this thread's next failure, as documented.
        LastError::Owned(s) => s.as_ptr(),
    })
}

fn owned(text: String) -> LastError {
    // An interior NUL cannot be shown in a C string: cut the text there.
    let bytes: Vec<u8> = text
        .into_bytes()
        .into_iter()
        .take_while(|&b| b != 0)
        .collect();
    LastError::Owned(CString::new(bytes).expect("NUL bytes were removed"))
}

/// Records `e` as the thread's last error and returns its status.
pub(crate) fn fail(e: &Error) -> shmring_status {
    let (status, text) = match e {
        Error::WouldBlock(what) => {
            let text = match *what {
                "full" => c"the ring is full",
                "empty" => c"the ring is empty",
                _ => c"the ring is contended",
            };
            set_last_error(LastError::Static(text));
            return SHMRING_WOULD_BLOCK;
        }
        Error::TimedOut(_) => {
            set_last_error(LastError::Static(c"timed out"));
            return SHMRING_TIMED_OUT;
        }
        Error::Closed(_) => (SHMRING_CLOSED, e.to_string()),
        Error::FrameTooLarge { .. } => (SHMRING_FRAME_TOO_LARGE, e.to_string()),
        Error::BufferTooSmall { .. } => (SHMRING_BUFFER_TOO_SMALL, e.to_string()),
        Error::Corrupted(_) => (SHMRING_CORRUPTED, e.to_string()),
        Error::Incompatible(_) => (SHMRING_INCOMPATIBLE, e.to_string()),
        Error::Busy(_) => (SHMRING_BUSY, e.to_string()),
        Error::NotFound(_) => (SHMRING_NOT_FOUND, e.to_string()),
        Error::AlreadyExists(_) => (SHMRING_ALREADY_EXISTS, e.to_string()),
        Error::PermissionDenied(_) => (SHMRING_PERMISSION_DENIED, e.to_string()),
        Error::InvalidArgument(_) => (SHMRING_INVALID_ARGUMENT, e.to_string()),
        Error::Unavailable(_) => (SHMRING_UNAVAILABLE, e.to_string()),
        _ => (SHMRING_IO_ERROR, e.to_string()),
    };
    set_last_error(owned(text));
    status
}

/// An `InvalidArgument` error.
pub(crate) fn invalid(text: impl Into<String>) -> Error {
    Error::InvalidArgument(text.into())
}

/// Runs an entry point's body: its error becomes a status and the thread's last error, and a
/// panic is caught at the boundary (unwinding into C is undefined behaviour) and becomes
/// `SHMRING_PANIC`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> shmring_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SHMRING_OK,
        Ok(Err(e)) => fail(&e),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(owned(format!("panic inside libshmring (a bug): {what}")));
            SHMRING_PANIC
        }
    }
}

/// The same for functions that return nothing: a panic is caught and recorded.
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = guard(|| {
        body();
        Ok(())
    });
}

/// The name of a status, as a static string ("SHMRING_OK", ...).
pub(crate) fn name(status: shmring_status) -> &'static CStr {
    match status {
        SHMRING_OK => c"SHMRING_OK",
        SHMRING_WOULD_BLOCK => c"SHMRING_WOULD_BLOCK",
        SHMRING_TIMED_OUT => c"SHMRING_TIMED_OUT",
        SHMRING_CLOSED => c"SHMRING_CLOSED",
        SHMRING_INVALID_ARGUMENT => c"SHMRING_INVALID_ARGUMENT",
        SHMRING_NOT_FOUND => c"SHMRING_NOT_FOUND",
        SHMRING_ALREADY_EXISTS => c"SHMRING_ALREADY_EXISTS",
        SHMRING_PERMISSION_DENIED => c"SHMRING_PERMISSION_DENIED",
        SHMRING_BUSY => c"SHMRING_BUSY",
        SHMRING_FRAME_TOO_LARGE => c"SHMRING_FRAME_TOO_LARGE",
        SHMRING_BUFFER_TOO_SMALL => c"SHMRING_BUFFER_TOO_SMALL",
        SHMRING_CORRUPTED => c"SHMRING_CORRUPTED",
        SHMRING_INCOMPATIBLE => c"SHMRING_INCOMPATIBLE",
        SHMRING_UNAVAILABLE => c"SHMRING_UNAVAILABLE",
        SHMRING_IO_ERROR => c"SHMRING_IO_ERROR",
        SHMRING_PANIC => c"SHMRING_PANIC",
        _ => c"SHMRING_UNKNOWN_STATUS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: last_error_ptr returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_stops_at_the_boundary() {
        let status = guard(|| panic!("deliberately"));
        assert_eq!(status, SHMRING_PANIC);
        assert!(last().contains("deliberately"), "{}", last());
        guard_void(|| panic!("also here"));
        assert!(last().contains("also here"));
    }

    #[test]
    fn errors_become_statuses_and_texts() {
        assert_eq!(fail(&Error::Busy("taken".into())), SHMRING_BUSY);
        assert_eq!(last(), "busy: taken");
        assert_eq!(fail(&Error::WouldBlock("empty")), SHMRING_WOULD_BLOCK);
        assert_eq!(last(), "the ring is empty");
        assert_eq!(fail(&invalid("a\0b")), SHMRING_INVALID_ARGUMENT);
        assert_eq!(last(), "invalid argument: a");
        for s in 0..=SHMRING_PANIC {
            assert!(name(s).to_str().unwrap().starts_with("SHMRING_"));
            assert_ne!(name(s), c"SHMRING_UNKNOWN_STATUS", "{s}");
        }
        assert_eq!(name(99), c"SHMRING_UNKNOWN_STATUS");
    }
}
