//! The event table, for core/v1 and events.k8s.io/v1 events alike: LAST SEEN, TYPE,
//! REASON, OBJECT and MESSAGE, then the wide columns with NAME last.

use k8s_openapi::api::core::v1::{Event, ObjectReference};

use super::cells::text;
use super::{col, doc, Cell, Column, NAME};

/// The event cells that read fields whose names differ between the two event APIs.
struct EventCells {
    last_seen: Cell,
    source: Cell,
    message: Cell,
    first_seen: Cell,
    count: Cell,
    object: Cell,
    subobject: Cell,
}

/// The event columns; `events.k8s.io` events are read through their own field names,
/// as upstream converts them to core events before printing.
fn events(new_api: bool) -> Vec<Column> {
    let cells = if new_api {
        EventCells {
            last_seen: |o| {
                event::last_seen(o, "/deprecatedLastTimestamp", "/deprecatedFirstTimestamp").into()
            },
            source: |o| event::source(o, "/deprecatedSource").into(),
            message: |o| text(o, "/note").trim().into(),
            first_seen: |o| event::first_seen(o, "/deprecatedFirstTimestamp").into(),
            count: |o| event::count(o, "/deprecatedCount"),
            object: |o| event::target(o, "/regarding").into(),
            subobject: |o| text(o, "/regarding/fieldPath").into(),
        }
    } else {
        EventCells {
            last_seen: |o| event::last_seen(o, "/lastTimestamp", "/firstTimestamp").into(),
            source: |o| event::source(o, "/source").into(),
            message: |o| text(o, "/message").trim().into(),
            first_seen: |o| event::first_seen(o, "/firstTimestamp").into(),
            count: |o| event::count(o, "/count"),
            object: |o| event::target(o, "/involvedObject").into(),
            subobject: |o| text(o, "/involvedObject/fieldPath").into(),
        }
    };
    vec![
        col("Last Seen", doc::<Event>("lastTimestamp"), cells.last_seen),
        col("Type", doc::<Event>("type"), |o| text(o, "/type").into()),
        col("Reason", doc::<Event>("reason"), |o| {
            text(o, "/reason").into()
        }),
        col("Object", doc::<Event>("involvedObject"), cells.object),
        col(
            "Subobject",
            doc::<ObjectReference>("fieldPath"),
            cells.subobject,
        )
        .wide(),
        col("Source", doc::<Event>("source"), cells.source).wide(),
        col("Message", doc::<Event>("message"), cells.message),
        col(
            "First Seen",
            doc::<Event>("firstTimestamp"),
            cells.first_seen,
        )
        .wide(),
        col("Count", doc::<Event>("count"), cells.count).wide(),
        NAME.wide(),
    ]
}

/// Cell logic of `printEvent`, parameterised by where each API version keeps a field.
mod event {
    use serde_json::{json, Value};

    use crate::api::table::cells::{since, text};

    pub fn first_seen(event: &Value, first: &str) -> String {
        match text(event, first) {
            "" => since(text(event, "/eventTime")),
            first => since(first),
        }
    }

    pub fn last_seen(event: &Value, last: &str, first: &str) -> String {
        if event.pointer("/series").is_some_and(|s| !s.is_null()) {
            return since(text(event, "/series/lastObservedTime"));
        }
        match text(event, last) {
            "" => first_seen(event, first),
            last => since(last),
        }
    }

    pub fn count(event: &Value, count: &str) -> Value {
        if let Some(series) = event.pointer("/series").filter(|s| !s.is_null()) {
            return json!(series.get("count").and_then(Value::as_i64).unwrap_or(0));
        }
        match event.pointer(count).and_then(Value::as_i64).unwrap_or(0) {
            // Singleton events of the new API carry no count.
            0 => json!(1),
            n => json!(n),
        }
    }

    pub fn target(event: &Value, reference: &str) -> String {
        let kind = text(event, &format!("{reference}/kind")).to_lowercase();
        match text(event, &format!("{reference}/name")) {
            "" => kind,
            name => format!("{kind}/{name}"),
        }
    }

    /// Component and host, falling back to the reporting controller and instance.
    pub fn source(event: &Value, source: &str) -> String {
        let pick = |a: &str, b: &str| {
            let first = text(event, a);
            if first.is_empty() {
                text(event, b).to_string()
            } else {
                first.to_string()
            }
        };
        let component = pick(&format!("{source}/component"), "/reportingController");
        let host = pick(&format!("{source}/host"), "/reportingInstance");
        if host.is_empty() {
            component
        } else {
            format!("{component}, {host}")
        }
    }
}

pub(super) fn columns(group: &str, kind: &str) -> Option<Vec<Column>> {
    match (group, kind) {
        ("events.k8s.io", "Event") => Some(events(true)),
        ("", "Event") => Some(events(false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::api::table::tests::{cells_of, headers, strings};
    use serde_json::json;

    #[test]
    fn events_of_both_apis_print_alike() {
        let headers = headers("", "v1", "events");
        assert_eq!(headers.first().unwrap(), &("Last Seen".to_string(), 0));
        assert_eq!(headers.last().unwrap(), &("Name".to_string(), 1));
        let core = json!({"metadata": {"name": "web.1"}, "type": "Warning", "reason": "BackOff", "message": " Back-off restarting \n",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{log}"},
            "source": {"component": "kubelet", "host": "n1"}, "count": 4});
        assert_eq!(
            strings(&cells_of("", "v1", "events", core)),
            [
                "<unknown>",
                "Warning",
                "BackOff",
                "pod/web",
                "spec.containers{log}",
                "kubelet, n1",
                "Back-off restarting",
                "<unknown>",
                "4",
                "web.1"
            ]
        );
        let new = json!({"metadata": {"name": "web.2"}, "type": "Normal", "reason": "Scheduled", "note": "assigned",
            "regarding": {"kind": "Pod", "name": "web"}, "reportingController": "default-scheduler"});
        assert_eq!(
            strings(&cells_of("events.k8s.io", "v1", "events", new)),
            [
                "<unknown>",
                "Normal",
                "Scheduled",
                "pod/web",
                "",
                "default-scheduler",
                "assigned",
                "<unknown>",
                "1",
                "web.2"
            ]
        );
    }
}
