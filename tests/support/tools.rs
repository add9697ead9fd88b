//! Finding the external programs tests talk to (Envoy, schemathesis): an environment variable,
//! else the project venv that `scripts/test` fills, else `PATH`.

use std::path::PathBuf;

use crate::process::workspace_root;

/// The program `name`: `$<env_var>`, else `<workspace>/.tools/venv/bin/<name>`, else `name`
/// on `PATH`; `None` if none exists.
pub fn find_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = workspace_root().join(".tools/venv/bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The program for a test that needs it, or `None` (with a printed reason) to skip the test.
///
/// # Panics
///
/// If the program is missing and `CI=true`: under CI a missing tool is a failure, not a skip.
pub fn require_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    match find_tool(name, env_var) {
        Some(path) => Some(path),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{name} is required under CI: run scripts/test, set ${env_var} or put `{name}` on PATH"
            )
        }
        None => {
            eprintln!(
                "skipping: {name} not found (${env_var}, .tools/venv/bin/{name}, PATH); \
                 scripts/test installs it"
            );
            None
        }
    }
}
