//! The Grafana dashboards of `deploy/grafana/dashboards/` as Grafana runs them: loading, the
//! structure Grafana needs, the queries of panels and variables, Grafana's expansion of
//! `$timeFilter`, `$__interval`, `$__interval_ms` and the template variables, and running an
//! expanded InfluxQL query on a real InfluxDB into series.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Influx, project_root};

/// Variables Grafana defines itself (longest first: `$__interval_ms` before `$__interval`).
pub const BUILTIN_VARIABLES: [&str; 4] = ["__interval_ms", "__rate_interval", "__interval", "timeFilter"];

/// The template variables every InfluxQL dashboard defines and every InfluxQL query uses.
pub const FILTER_VARIABLES: [&str; 3] = ["model", "task_type", "tenant"];

/// The oldest `schemaVersion` accepted: Grafana 10.3.
pub const MIN_SCHEMA_VERSION: u64 = 39;

/// The `$__interval` the expansion uses, and its length in seconds.
pub const INTERVAL: (&str, i64) = ("1m", 60);

/// The project's dashboard directory.
pub fn dashboards_dir() -> PathBuf {
    project_root().join("deploy/grafana/dashboards")
}

/// Every `*.json` of `dir`, parsed, by file name in name order.
pub fn dashboards(dir: &Path) -> anyhow::Result<Vec<(String, Value)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "json") {
            files.push(path);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let json = serde_json::from_str(&text).with_context(|| name.clone())?;
            Ok((name, json))
        })
        .collect()
}

/// Every panel, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(p);
        all.extend(p["panels"].as_array().into_iter().flatten());
    }
    all
}

/// What keeps a file from being a Grafana dashboard: a `schemaVersion` of Grafana 10.3 or
/// newer, a title and uid, `templating.list`, panels with unique ids and a `gridPos`, every
/// panel but text and rows with `targets`, every InfluxQL target raw (`rawQuery`). Empty when
/// there is nothing.
pub fn structure_problems(name: &str, d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut require = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{name}: {what}"));
        }
    };
    require(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= MIN_SCHEMA_VERSION),
        format!("schemaVersion {MIN_SCHEMA_VERSION} or newer"),
    );
    require(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title".into());
    require(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid".into());
    require(d["templating"]["list"].is_array(), "templating.list".into());
    let all = panels(d);
    require(d["panels"].is_array() && !all.is_empty(), "panels".into());
    let ids: Vec<Option<u64>> = all.iter().map(|p| p["id"].as_u64()).collect();
    require(ids.iter().all(Option::is_some), format!("every panel has an id: {ids:?}"));
    require(ids.iter().collect::<BTreeSet<_>>().len() == ids.len(), format!("unique panel ids {ids:?}"));
    for p in &all {
        let title = p["title"].as_str().unwrap_or("");
        require(!title.is_empty(), "every panel has a title".into());
        require(
            p["gridPos"]["w"].as_u64().is_some() && p["gridPos"]["h"].as_u64().is_some(),
            format!("{title}: gridPos"),
        );
        if p["type"] != "text" && p["type"] != "row" {
            require(p["targets"].as_array().is_some_and(|t| !t.is_empty()), format!("{title}: targets"));
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if p["datasource"]["type"] == "influxdb" || t["datasource"]["type"] == "influxdb" {
                require(t["rawQuery"] == true, format!("{title}: InfluxQL as written (rawQuery)"));
            }
        }
    }
    problems
}

/// A query of a dashboard: where it is, its data source and its text.
#[derive(Debug, Clone)]
pub struct Query {
    /// The dashboard's file name.
    pub dashboard: String,
    /// The panel's title, or `variable <name>`.
    pub panel: String,
    /// The data source's type (`influxdb`, `prometheus`).
    pub datasource_type: String,
    /// The data source's uid.
    pub datasource_uid: String,
    /// The query as written.
    pub text: String,
    /// A templating query (`SHOW TAG VALUES ...`) rather than a panel's.
    pub templating: bool,
}

/// Every panel target's and every query variable's query of a dashboard.
pub fn queries(name: &str, dashboard: &Value) -> Vec<Query> {
    let query = |source: &Value, panel: String, text: Option<&str>, templating: bool| Query {
        dashboard: name.to_owned(),
        panel,
        datasource_type: source["type"].as_str().unwrap_or("").to_owned(),
        datasource_uid: source["uid"].as_str().unwrap_or("").to_owned(),
        text: text.unwrap_or("").to_owned(),
        templating,
    };
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let source = if t["datasource"].is_object() { &t["datasource"] } else { &p["datasource"] };
            let text = t["query"].as_str().or_else(|| t["expr"].as_str());
            out.push(query(source, p["title"].as_str().unwrap_or("").to_owned(), text, false));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let text = v["query"].as_str().or_else(|| v["query"]["query"].as_str());
            let panel = format!("variable {}", v["name"].as_str().unwrap_or(""));
            out.push(query(&v["datasource"], panel, text, true));
        }
    }
    out
}

/// The `$names` a query uses.
pub fn variables_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            used.insert(name);
        }
    }
    used
}

/// How Grafana fills the variables in: the values Grafana puts for `$model`, `$task_type` and
/// `$tenant` (regex-escaped; several values as `(a|b)`; All as the variables' `allValue`).
#[derive(Debug, Clone)]
pub struct Selection {
    /// What the selection is, for messages.
    pub name: &'static str,
    /// `$model`.
    pub model: String,
    /// `$task_type`.
    pub task_type: String,
    /// `$tenant`.
    pub tenant: String,
}

impl Selection {
    /// Every variable at All (`allValue` `.*`).
    pub fn all() -> Selection {
        Selection { name: "All", model: ".*".into(), task_type: ".*".into(), tenant: ".*".into() }
    }

    /// The given values of each variable (one value as itself, several as `(a|b)`).
    pub fn of(name: &'static str, models: &[&str], task_types: &[&str], tenants: &[&str]) -> Selection {
        Selection { name, model: several(models), task_type: several(task_types), tenant: several(tenants) }
    }
}

/// Grafana's escaping of a variable's value inside an InfluxQL regex.
pub fn regex_escape(value: &str) -> String {
    value.chars().fold(String::new(), |mut s, c| {
        if "\\^$*+?.()|[]{}/".contains(c) {
            s.push('\\');
        }
        s.push(c);
        s
    })
}

/// Several selected values as Grafana writes them into a regex: `(a|b)`; one value as itself.
pub fn several(values: &[&str]) -> String {
    match values {
        [one] => regex_escape(one),
        _ => format!("({})", values.iter().map(|v| regex_escape(v)).collect::<Vec<_>>().join("|")),
    }
}

/// The query as Grafana sends it for the range `[from, to)` (epoch seconds), [`INTERVAL`]
/// buckets.
pub fn expand(text: &str, selection: &Selection, from: i64, to: i64) -> String {
    // Grafana's $timeFilter: the range in epoch milliseconds, its end inclusive.
    let time_filter = format!("time >= {}ms and time <= {}ms", from * 1_000, to * 1_000 - 1);
    text.replace("$timeFilter", &time_filter)
        .replace("$__interval_ms", &(INTERVAL.1 * 1_000).to_string())
        .replace("$__interval", INTERVAL.0)
        .replace("$model", &selection.model)
        .replace("$task_type", &selection.task_type)
        .replace("$tenant", &selection.tenant)
}

/// One series of an answer.
#[derive(Debug, Clone)]
pub struct Series {
    /// The `GROUP BY` tags.
    pub tags: BTreeMap<String, String>,
    /// The columns, `time` first where there is one.
    pub columns: Vec<String>,
    /// Rows: time (epoch seconds; absent for SHOW queries) and the other columns by name.
    pub rows: Vec<(Option<i64>, BTreeMap<String, Value>)>,
}

/// Runs one statement as Grafana's InfluxDB data source does (`GET /query`, epoch seconds) and
/// returns the series of its first result; an HTTP or InfluxQL error is an error.
pub async fn run(influx: &Influx, db: &str, q: &str) -> anyhow::Result<Vec<Series>> {
    let reply = modelperf_telemetry::http::client()
        .build()?
        .get(format!("{}/query", influx.url()))
        .query(&[("q", q), ("db", db), ("epoch", "s")])
        .send()
        .await?;
    let status = reply.status();
    let body: Value = reply.json().await?;
    let result = &body["results"][0];
    if !status.is_success() || result.get("error").is_some() {
        bail!("{status} for\n{q}\n{body}");
    }
    let mut out = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let tags = series["tags"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect();
        let columns: Vec<String> =
            series["columns"].as_array().into_iter().flatten().map(|c| c.as_str().unwrap_or("").to_owned()).collect();
        let rows = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|values| {
                let mut time = None;
                let mut named = BTreeMap::new();
                for (column, value) in columns.iter().zip(values.as_array().into_iter().flatten()) {
                    if column == "time" {
                        time = value.as_i64();
                    } else {
                        named.insert(column.clone(), value.clone());
                    }
                }
                (time, named)
            })
            .collect();
        out.push(Series { tags, columns, rows });
    }
    Ok(out)
}

/// The names of the outer `SELECT`'s columns (`AS "name"` outside parentheses, before the
/// outer `FROM`), with `time` first, or `key`, `value` for `SHOW TAG VALUES`.
pub fn named_columns(query: &str) -> Vec<String> {
    if query.starts_with("SHOW TAG VALUES") {
        return vec!["key".to_owned(), "value".to_owned()];
    }
    let mut depth = 0;
    let mut outer = String::new();
    for c in query.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outer.push(c),
            _ => {}
        }
    }
    let select = outer.find(" FROM ").map_or(outer.as_str(), |at| &outer[..at]);
    let mut columns = vec!["time".to_owned()];
    columns.extend(select.split(" AS \"").skip(1).filter_map(|rest| rest.find('"').map(|end| rest[..end].to_owned())));
    columns
}
