//! A stack of undo actions: every step of a mount that changes something
//! pushes how to take it back; if the sequence fails anywhere (an early
//! return, `?`, a panic), dropping the stack runs the actions in reverse.
//! On success the caller [`Undo::commit`]s and nothing is undone.

type Action = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct Undo {
    actions: Vec<(&'static str, Action)>,
}

impl Undo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records how to undo the step just done. `what` names it in logs.
    pub fn push(&mut self, what: &'static str, action: impl FnOnce() + Send + 'static) {
        self.actions.push((what, Box::new(action)));
    }

    /// The sequence succeeded: forget every undo action.
    pub fn commit(mut self) {
        self.actions.clear();
    }

    /// Number of pending undo actions.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, action)) = self.actions.pop() {
            tracing::debug!(step = what, "undoing");
            action();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> (
        Arc<Mutex<Vec<&'static str>>>,
        impl Fn(&'static str) -> Action,
    ) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let make = move |name: &'static str| -> Action {
            let l = l.clone();
            Box::new(move || l.lock().unwrap().push(name))
        };
        (log, make)
    }

    #[test]
    fn drop_runs_actions_in_reverse() {
        let (log, make) = recorder();
        {
            let mut undo = Undo::new();
            undo.push("a", make("a"));
            undo.push("b", make("b"));
            undo.push("c", make("c"));
            assert_eq!(undo.len(), 3);
        }
        assert_eq!(*log.lock().unwrap(), vec!["c", "b", "a"]);
    }

    #[test]
    fn commit_runs_nothing() {
        let (log, make) = recorder();
        let mut undo = Undo::new();
        undo.push("a", make("a"));
        undo.push("b", make("b"));
        undo.commit();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn early_return_with_question_mark_undoes() {
        let (log, make) = recorder();
        let run = |fail_at: u32| -> Result<(), u32> {
            let mut undo = Undo::new();
            for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
                let i = i as u32;
                if i == fail_at {
                    return Err(i);
                }
                undo.push(name, make(name));
            }
            undo.commit();
            Ok(())
        };
        assert_eq!(run(2), Err(2));
        assert_eq!(*log.lock().unwrap(), vec!["two", "one"]);
        log.lock().unwrap().clear();
        assert_eq!(run(9), Ok(()));
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn panic_unwinding_undoes() {
        let (log, make) = recorder();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut undo = Undo::new();
            undo.push("x", make("x"));
            panic!("boom");
        }));
        assert!(result.is_err());
        assert_eq!(*log.lock().unwrap(), vec!["x"]);
    }
}
