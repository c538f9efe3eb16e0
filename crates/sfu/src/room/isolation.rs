//! Panic isolation: a room runs each input under a guard, so a bug in it (str0m panics by
//! design on internal inconsistencies) closes that room and nothing else.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{EndCause, Output, Removed, Room};

/// A room panicked while handling an input; it has been closed (see [`Room::run_isolated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the room panicked and was closed, ending {sessions} sessions")]
#[non_exhaustive]
pub struct RoomPanicked {
    /// How many sessions the room held (each is reported as [`Output::Ended`]).
    pub sessions: usize,
}

impl Room {
    /// Runs `f` (one input: a datagram, a timeout, a command, a drain) on the room under a
    /// panic guard. If it panics, the room is closed: its state is dropped and every session it
    /// held comes out of [`Room::poll_output`] as [`Output::Ended`] with
    /// [`EndCause::RoomFailed`], so the shell reports them like any other end; the room is
    /// then empty.
    pub fn run_isolated<R>(&mut self, f: impl FnOnce(&mut Room) -> R) -> Result<R, RoomPanicked> {
        // The room is not used after a panic except to list its sessions' identities (plain
        // data) and drop its state, so a broken invariant inside it cannot leak out.
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => Ok(r),
            Err(_) => Err(self.close_after_panic()),
        }
    }

    /// Panics inside the room's guard, as a bug in the room would (tests of the isolation).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&mut self) {
        panic!("fault injection: room panic");
    }

    fn close_after_panic(&mut self) -> RoomPanicked {
        let sessions = std::mem::take(&mut self.sessions);
        let n = sessions.len();
        // Datagrams and offers made before the panic may come from a half-applied input;
        // sessions already reported as ended stay reported.
        self.transmits.clear();
        self.outputs.retain(|o| matches!(o, Output::Ended(_)));
        for s in &sessions {
            self.outputs.push_back(Output::Ended(Removed {
                session: s.id,
                identity: s.identity.clone(),
                role: s.role,
                kind: s.kind,
                reason: EndCause::RoomFailed.reason(),
                cause: EndCause::RoomFailed,
            }));
        }
        self.tracks.clear();
        // Dropping broken state must not take the caller down with it.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(sessions)));
        RoomPanicked { sessions: n }
    }
}
