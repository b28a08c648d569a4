//! Sorting store errors into those a retry can fix and those that need a person.
//!
//! A retry fixes the network, a busy or failing store (5xx, 429, timeouts) and a
//! full disk. It does not fix a missing bucket, a refused credential or a setting
//! the store rejects (403, 401, 404 on write, other 4xx): those pause uploads and
//! say what to fix, and are tried again now and then in case someone fixed them.

#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    /// Worth retrying as is: a busy or failing store, a full disk.
    #[error("{0}")]
    Transient(String),
    /// The store did not answer at all (connection refused or reset, a
    /// timeout, no route): worth retrying, and at once when it answers again.
    #[error("{0}")]
    Unreachable(String),
    /// Retrying will not help until someone changes something.
    #[error("{0}")]
    NeedsOperator(String),
}

impl TargetError {
    pub fn needs_operator(&self) -> bool {
        matches!(self, TargetError::NeedsOperator(_))
    }
}

/// The HTTP status a store answered with, when the error carries one.
pub fn http_status(e: &object_store::Error) -> Option<u16> {
    // object_store keeps the status in a private type; its message is stable:
    // "... status code: 403 Forbidden: <body>".
    let text = e.to_string();
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The store's message without its XML wrapping: `<Code>X</Code><Message>Y</Message>`
/// becomes `X: Y`, and request IDs and the like are left out.
fn tidy(message: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = message.find(&open)? + open.len();
        let end = message[start..].find("</")? + start;
        Some(message[start..end].to_owned())
    };
    match (message.find("<?xml"), tag("Code")) {
        (Some(xml), Some(code)) => {
            let text = tag("Message").unwrap_or_default();
            format!("{}{code}: {text}", &message[..xml])
        }
        _ => message.to_owned(),
    }
}

pub fn classify(e: object_store::Error) -> TargetError {
    use object_store::Error as E;
    let message = tidy(&e.to_string());
    let hint = match &e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Some(
            "the store refused the credentials or the permission; check the key, its policy and the bucket",
        ),
        E::NotFound { .. } => Some("the bucket or container does not exist; create it or fix the target"),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            Some("the store does not support an operation larch needs")
        }
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => Some("a setting is wrong"),
        _ => match http_status(&e) {
            Some(408 | 409 | 425 | 429) | None => None,
            Some(501) => Some("the store does not implement a request larch sends (encryption?)"),
            Some(status) if (400..500).contains(&status) => Some(
                "the store rejected the request; check the target's settings (region, encryption, KMS key)",
            ),
            _ => None,
        },
    };
    let local = io_kind(&e).is_some_and(|kind| {
        matches!(
            kind,
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        )
    });
    match (hint, local) {
        (Some(hint), _) => TargetError::NeedsOperator(format!("{message} ({hint})")),
        (None, true) => TargetError::NeedsOperator(message),
        // An answer carries a status; without one the request never got one.
        (None, false) if http_status(&e).is_none() && io_kind(&e).is_none_or(is_network) => {
            TargetError::Unreachable(message)
        }
        (None, false) => TargetError::Transient(message),
    }
}

/// An I/O error on the way to the store, not on this host's disk.
fn is_network(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::UnexpectedEof
    )
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_xml_errors_are_shortened_to_code_and_message() {
        let raw = "PUT x - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>abc</RequestId></Error>";
        assert_eq!(
            tidy(raw),
            "PUT x - Server returned non-2xx status code: 403 Forbidden: AccessDenied: Access Denied"
        );
        assert_eq!(tidy("connection refused"), "connection refused");
    }

    #[test]
    fn a_store_that_did_not_answer_is_told_from_one_that_answered_busy() {
        let generic =
            |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                store: "S3",
                source,
            };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            classify(generic(Box::new(refused))),
            TargetError::Unreachable(_)
        ));
        assert!(matches!(
            classify(generic("error sending request".into())),
            TargetError::Unreachable(_)
        ));
        let busy = "PUT x - Server returned non-2xx status code: 503 Service Unavailable: SlowDown";
        assert!(matches!(
            classify(generic(busy.into())),
            TargetError::Transient(_)
        ));
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(matches!(
            classify(generic(Box::new(full))),
            TargetError::Transient(_)
        ));
    }
}
