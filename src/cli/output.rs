//! `--output json|table`: JSON as the admin API returns it (pretty), or aligned columns
//! for people. Tables pick their columns per command; a single object prints as key/value
//! rows. Presentation only: nothing here changes what is shown, only how.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Table,
}

/// A column: header and the JSON pointer of its value in each row.
pub type Column = (&'static str, &'static str);

pub fn print(v: &Value, output: Output, columns: &[Column]) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => match v {
            Value::Array(rows) => print!("{}", table(rows, columns)),
            Value::Object(_) if !columns.is_empty() => print!("{}", table(std::slice::from_ref(v), columns)),
            other => print!("{}", key_values(other)),
        },
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub fn table(rows: &[Value], columns: &[Column]) -> String {
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| (*h).to_owned()).collect()];
    for r in rows {
        grid.push(columns.iter().map(|(_, p)| cell(r.pointer(p).unwrap_or(&Value::Null))).collect());
    }
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| grid.iter().map(|row| row.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (n, row) in grid.iter().enumerate() {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

fn key_values(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let w = m.keys().map(String::len).max().unwrap_or(0);
            m.iter().map(|(k, v)| format!("{k:<w$}  {}\n", cell(v))).collect()
        }
        other => format!("{}\n", cell(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let rows = vec![json!({"name": "a", "type": "UserDefined"}), json!({"name": "longer", "type": null})];
        let t = table(&rows, &[("NAME", "/name"), ("TYPE", "/type")]);
        assert_eq!(t, "NAME    TYPE\n------  -----------\na       UserDefined\nlonger\n");
    }
}
