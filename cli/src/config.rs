//! One configuration file for `weir serve` and `weir executor` (`--config PATH`, TOML), and
//! `weir config check|example`.
//!
//! The file's keys are the commands' flags: the long name with `-` written `_`
//! (`--instance-slots 64` is `instance_slots = 64`), in a `[serve]` or `[executor]` table, or
//! at the top level for a key both commands have (`instance_slots`, `executor_token`), which
//! then applies to both unless a section sets it too. Every key also has an environment
//! variable, derived one way: `WEIR_` and the key in capitals (`WEIR_INSTANCE_SLOTS`). A value
//! comes from, first to last: the flag, the environment variable, the file, the default.
//!
//! The whole file and the keys' environment variables are checked before anything starts, and
//! every problem is reported at once (exit code 2): a missing or unreadable file, TOML syntax,
//! an unknown section or key (with the nearest known one), a value of the wrong type, and a
//! value the flag itself would refuse (out of range, not an address), in the file or in a
//! `WEIR_…` variable: each value goes through the very parser of its flag, so the file and the
//! environment accept exactly what the command line accepts.

use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The commands the file configures: each is a `[section]` of the file.
pub(crate) const SECTIONS: [&str; 2] = ["serve", "executor"];

/// The flag naming the file, the one flag that is not a key.
const CONFIG: &str = "config";

/// Exit code of a start refused for its configuration (as clap's for a bad command line).
pub(crate) const INVALID: u8 = 2;

/// `weir config`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Check a configuration file (exit 2 with every problem listed, 0 when it is valid).
    Check {
        /// The file (TOML).
        path: PathBuf,
    },
    /// Print a complete configuration file: every key of `[serve]` and `[executor]` with its
    /// help, its environment variable and its default.
    Example,
}

/// The environment variable of a key: `WEIR_` and the key in capitals.
pub(crate) fn env_name(key: &str) -> String {
    format!("WEIR_{}", key.to_ascii_uppercase())
}

/// The file key of a flag: its long name with `-` written `_`; `None` for what is not a key
/// (`--config`, `--help`, positional arguments).
fn key_of(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    if long == CONFIG || long == "help" || long == "version" {
        return None;
    }
    if matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) {
        return None;
    }
    Some(long.replace('-', "_"))
}

/// `command` (weir's) with the environment variable of every key of `serve` and `executor`
/// set, derived by [`env_name`]; a repeated flag takes a comma-separated list there.
pub(crate) fn with_environment(command: Command) -> Command {
    SECTIONS.iter().fold(command, |command, section| {
        command.mut_subcommand(section, |sub| sub.mut_args(with_env))
    })
}

/// `arg` with its environment variable, if it is a key.
fn with_env(arg: Arg) -> Arg {
    match key_of(&arg) {
        Some(key) => {
            let repeated = matches!(arg.get_action(), ArgAction::Append);
            let arg = arg.env(env_name(&key));
            if repeated {
                arg.value_delimiter(',')
            } else {
                arg
            }
        }
        None => arg,
    }
}

/// What is wrong with the environment variables of `section`'s keys that are set, each read
/// as the command reads it (the flag's parser; a list split at commas).
fn environment_problems(command: &Command, section: &str) -> Vec<String> {
    let sub = section_command(command, section);
    let mut problems = Vec::new();
    for (key, arg) in keys(&sub) {
        let name = env_name(&key);
        if std::env::var_os(&name).is_none() {
            continue;
        }
        let alone = sub
            .clone()
            .no_binary_name(true)
            .mut_arg(arg.get_id().clone(), with_env);
        if let Err(error) = alone.try_get_matches_from(Vec::<OsString>::new()) {
            let rendered = error.render().to_string();
            let line = rendered.lines().next().unwrap_or_default();
            let switch = if matches!(arg.get_action(), ArgAction::SetTrue) {
                ": expected true or false"
            } else {
                ""
            };
            problems.push(format!(
                "environment {name}: {}{switch}",
                line.strip_prefix("error: ").unwrap_or(line)
            ));
        }
    }
    problems
}

/// What `weir <section> --config PATH` would refuse at its start beyond each value alone
/// (settings that cannot work together, a state store URL of the wrong shape), with the file,
/// this environment and the defaults as that start would see them.
fn start_problems(command: &Command, section: &str, path: &Path) -> Vec<String> {
    use clap::FromArgMatches;
    let line: Vec<OsString> = vec![
        "weir".into(),
        section.into(),
        "--config".into(),
        path.as_os_str().to_owned(),
    ];
    let Ok(matches) = command.clone().try_get_matches_from(&line) else {
        return Vec::new();
    };
    let Some((_, sub)) = matches.subcommand() else {
        return Vec::new();
    };
    let Some(Ok(arguments)) = merged_line(command, section, sub, line) else {
        return Vec::new();
    };
    let parsed = with_environment(command.clone())
        .try_get_matches_from(arguments)
        .map_err(|e| e.to_string())
        .and_then(|m| crate::Cli::from_arg_matches(&m).map_err(|e| e.to_string()));
    let problems = match parsed {
        Ok(crate::Cli {
            command: crate::Command::Serve(args),
        }) => crate::serve::start_problems(&args),
        Ok(crate::Cli {
            command: crate::Command::Executor(args),
        }) => crate::executor::start_problems(&args),
        Ok(_) => Vec::new(),
        Err(error) => vec![error.lines().next().unwrap_or_default().to_owned()],
    };
    problems
        .into_iter()
        .map(|problem| format!("[{section}] {problem}"))
        .collect()
}

/// The `WEIR_…` variables set in this environment that name a key of either section, sorted.
fn overriding_variables(command: &Command) -> Vec<String> {
    let mut names: Vec<String> = SECTIONS
        .iter()
        .flat_map(|section| {
            keys(&section_command(command, section))
                .into_iter()
                .map(|(key, _)| env_name(&key))
                .collect::<Vec<_>>()
        })
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The subcommand `name` of `command`, or an empty one (never: `SECTIONS` are weir's).
fn section_command(command: &Command, name: &str) -> Command {
    command
        .find_subcommand(name)
        .cloned()
        .unwrap_or_else(|| Command::new(name.to_owned()))
}

/// One key's value as the command-line arguments that say the same, or what is wrong with its
/// type. A flag takes `true` or `false`; a repeated flag a list of strings (or one string); a
/// number key an integer; any other key a string.
fn arguments(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let long = arg.get_long().unwrap_or(key);
    let type_name = value.type_str();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(format!("expected true or false, found {type_name}")),
        },
        ArgAction::Append => {
            let items = match value {
                toml::Value::Array(items) => items.as_slice(),
                toml::Value::String(_) => std::slice::from_ref(value),
                _ => return Err(format!("expected a list of strings, found {type_name}")),
            };
            items
                .iter()
                .map(|item| match item {
                    toml::Value::String(text) => Ok(format!("--{long}={text}")),
                    other => Err(format!(
                        "expected a list of strings, found a list holding {}",
                        other.type_str()
                    )),
                })
                .collect()
        }
        _ => {
            let parser = arg.get_value_parser().type_id();
            let integer = [
                TypeId::of::<u8>(),
                TypeId::of::<u16>(),
                TypeId::of::<u32>(),
                TypeId::of::<u64>(),
                TypeId::of::<usize>(),
                TypeId::of::<i32>(),
                TypeId::of::<i64>(),
            ]
            .iter()
            .any(|id| parser == *id);
            match value {
                toml::Value::Integer(number) if integer => Ok(vec![format!("--{long}={number}")]),
                toml::Value::String(text) if !integer => Ok(vec![format!("--{long}={text}")]),
                _ if integer => Err(format!("expected an integer, found {type_name}")),
                _ => Err(format!("expected a string, found {type_name}")),
            }
        }
    }
}

/// What the flag's own parser says of `arguments`, as one line (clap's message without its
/// `error: ` prefix).
fn parse_problem(section: &Command, arguments: &[String]) -> Option<String> {
    let error = section
        .clone()
        .no_binary_name(true)
        .try_get_matches_from(arguments)
        .err()?;
    let rendered = error.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    Some(line.strip_prefix("error: ").unwrap_or(line).to_owned())
}

/// Edit distance of two keys (Levenshtein, by characters).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let insert = current.get(j).copied().unwrap_or(0) + 1;
            let delete = previous.get(j + 1).copied().unwrap_or(0) + 1;
            current.push(substitute.min(insert).min(delete));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

/// The known name nearest to `unknown`, when it is near enough to be a slip (a third of its
/// length, at least 2 edits; `-` for `_` counts as a slip too).
fn nearest<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let unknown = unknown.replace('-', "_").to_ascii_lowercase();
    let limit = (unknown.chars().count() / 3).max(2);
    known
        .map(|name| (distance(&unknown, name), name))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// The keys of a section, with their flags.
fn keys(section: &Command) -> Vec<(String, &Arg)> {
    section
        .get_arguments()
        .filter_map(|arg| key_of(arg).map(|key| (key, arg)))
        .collect()
}

/// A checked file: per section, the command-line arguments its keys (shared and its own) say.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// `(section, key, arguments)`, a section's own keys after the shared ones.
    entries: Vec<(String, String, Vec<String>)>,
}

impl Checked {
    /// How many values the file sets.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Reads and checks the file at `path` against `command` (weir's, without environment
/// variables): every problem, or what each section's keys say.
pub(crate) fn check(command: &Command, path: &Path) -> Result<Checked, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| vec![format!("cannot read {}: {error}", path.display())])?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        vec![format!(
            "{} is not valid TOML: {}",
            path.display(),
            error.to_string().trim_end()
        )]
    })?;
    let sections: Vec<(&str, Command)> = SECTIONS
        .iter()
        .map(|name| (*name, section_command(command, name)))
        .collect();
    let mut problems = Vec::new();
    let mut checked = Checked::default();
    // Shared keys first: a section's own value comes after, and the last one given wins.
    let mut shared = Vec::new();
    let mut own = Vec::new();
    for (name, value) in &table {
        if let Some((_, section)) = sections.iter().find(|(s, _)| *s == name.as_str()) {
            match value {
                toml::Value::Table(entries) => own.push((name.as_str(), section, entries)),
                other => problems.push(format!(
                    "[{name}] must be a table, found {}",
                    other.type_str()
                )),
            }
        } else if let toml::Value::Table(_) = value {
            let hint = nearest(name, SECTIONS.iter().copied())
                .map(|s| format!("; did you mean [{s}]?"))
                .unwrap_or_default();
            problems.push(format!(
                "unknown section [{name}] (sections: [serve], [executor]){hint}"
            ));
        } else {
            shared.push((name.as_str(), value));
        }
    }
    for (key, value) in shared {
        let owners: Vec<&(&str, Command)> = sections
            .iter()
            .filter(|(_, section)| keys(section).iter().any(|(k, _)| k == key))
            .collect();
        if let [(only, _)] = owners.as_slice() {
            problems.push(format!(
                "{key} is a key of [{only}] only: put it in [{only}] (the top holds the keys of both)"
            ));
            continue;
        }
        if owners.is_empty() {
            let all: Vec<String> = sections
                .iter()
                .flat_map(|(_, section)| keys(section).into_iter().map(|(k, _)| k))
                .collect();
            let hint = nearest(key, all.iter().map(String::as_str))
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            problems.push(format!("unknown key {key}{hint}"));
            continue;
        }
        for (name, section) in owners {
            let Some((_, arg)) = keys(section).into_iter().find(|(k, _)| k == key) else {
                continue;
            };
            match validate(section, arg, key, value) {
                Ok(arguments) => {
                    checked
                        .entries
                        .push(((*name).to_owned(), key.to_owned(), arguments));
                }
                Err(problem) => problems.push(format!("{key} (for [{name}]): {problem}")),
            }
        }
    }
    for (name, section, entries) in own {
        let known = keys(section);
        for (key, value) in entries {
            let Some((_, arg)) = known.iter().find(|(k, _)| k == key) else {
                let elsewhere = sections
                    .iter()
                    .find(|(other, s)| *other != name && keys(s).iter().any(|(k, _)| k == key))
                    .map(|(other, _)| format!("; {key} is a key of [{other}]"));
                let hint = elsewhere.or_else(|| {
                    nearest(key, known.iter().map(|(k, _)| k.as_str()))
                        .map(|k| format!("; did you mean {k}?"))
                });
                problems.push(format!(
                    "[{name}] unknown key {key}{}",
                    hint.unwrap_or_default()
                ));
                continue;
            };
            match validate(section, arg, key, value) {
                Ok(arguments) => checked
                    .entries
                    .push((name.to_owned(), key.clone(), arguments)),
                Err(problem) => problems.push(format!("[{name}] {key}: {problem}")),
            }
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

/// One value: its type, then what its flag's parser says.
fn validate(
    section: &Command,
    arg: &Arg,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<String>, String> {
    let arguments = arguments(arg, key, value)?;
    match parse_problem(section, &arguments) {
        Some(problem) => Err(problem),
        None => Ok(arguments),
    }
}

/// The command line of this process with the file's values for `section` added where neither
/// the command line nor the environment gave one (`matches`: this command line parsed by
/// `command`, weir's without environment variables); `None` for a command that takes no
/// configuration. Every problem of the environment variables and of the file is an error,
/// all of them at once.
pub(crate) fn merged_arguments(
    command: &Command,
    section: &str,
    matches: &ArgMatches,
) -> Option<Result<Vec<OsString>, Vec<String>>> {
    merged_line(command, section, matches, std::env::args_os().collect())
}

/// [`merged_arguments`] of the command line `arguments` (the binary's name first).
fn merged_line(
    command: &Command,
    section: &str,
    matches: &ArgMatches,
    mut arguments: Vec<OsString>,
) -> Option<Result<Vec<OsString>, Vec<String>>> {
    if !SECTIONS.contains(&section) {
        return None;
    }
    let mut problems = environment_problems(command, section);
    let Some(path) = matches.try_get_one::<PathBuf>(CONFIG).ok().flatten() else {
        return Some(if problems.is_empty() {
            Ok(arguments)
        } else {
            Err(problems)
        });
    };
    let checked = match check(command, path) {
        Ok(checked) if problems.is_empty() => checked,
        Ok(_) => return Some(Err(problems)),
        Err(more) => {
            problems.extend(more);
            return Some(Err(problems));
        }
    };
    let sub = section_command(command, section);
    // The last value a section gives for a key wins: the shared one is overridden by its own.
    let mut chosen: Vec<(&str, &Vec<String>)> = Vec::new();
    for (name, key, values) in &checked.entries {
        if name != section {
            continue;
        }
        chosen.retain(|(k, _)| k != key);
        chosen.push((key.as_str(), values));
    }
    for (key, values) in chosen {
        let Some((_, arg)) = keys(&sub).into_iter().find(|(k, _)| k == key) else {
            continue;
        };
        let given = matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
            || std::env::var_os(env_name(key)).is_some();
        if !given {
            arguments.extend(values.iter().map(OsString::from));
        }
    }
    Some(Ok(arguments))
}

/// A TOML string literal (basic string; JSON's escapes are TOML's).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// A complete configuration file: each section, each key with its help, its environment
/// variable and its default (keys without one commented out).
pub(crate) fn example(command: &Command) -> String {
    let mut out = String::new();
    out.push_str(
        "# weir configuration: `weir serve --config FILE`, `weir executor --config FILE`.\n\
         # Keys are the flags (`--instance-slots` is instance_slots); a value comes from, first\n\
         # to last: the flag, the environment variable (WEIR_ and the key in capitals), this\n\
         # file, the default. A key both commands have may also stand at the top, before the\n\
         # sections, for both. Check a file with `weir config check FILE`.\n",
    );
    for name in SECTIONS {
        let section = section_command(command, name);
        line(&mut out, &format!("\n[{name}]"));
        for (key, arg) in keys(&section) {
            out.push('\n');
            let help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            for text in wrap(&help, 94) {
                line(&mut out, &format!("# {text}"));
            }
            line(&mut out, &format!("# environment: {}", env_name(&key)));
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let integer = arguments(arg, &key, &toml::Value::Integer(0)).is_ok();
            match arg.get_action() {
                ArgAction::SetTrue => {
                    line(&mut out, &format!("{key} = false"));
                }
                ArgAction::Append => {
                    line(&mut out, &format!("{key} = []"));
                }
                _ => match defaults.first() {
                    Some(value) if integer => {
                        line(&mut out, &format!("{key} = {value}"));
                    }
                    Some(value) => {
                        line(&mut out, &format!("{key} = {}", quoted(value)));
                    }
                    None if integer => {
                        line(&mut out, &format!("# {key} = 0  (no default)"));
                    }
                    None => {
                        line(&mut out, &format!("# {key} = \"\"  (no default)"));
                    }
                },
            }
        }
    }
    out
}

/// Appends `text` and a line end.
fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

/// `text`'s words in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// Prints the problems of a file, one a line, on stderr.
pub(crate) fn report(path: Option<&Path>, problems: &[String]) {
    let name = path.map_or_else(String::new, |p| format!(" {}", p.display()));
    eprintln!(
        "error: the configuration{name} has {} problem(s); nothing was started:",
        problems.len()
    );
    for problem in problems {
        eprintln!("  - {problem}");
    }
}

/// `weir config check`'s problems: of the file and of the environment it would start with.
fn report_check(path: &Path, problems: &[String]) {
    eprintln!(
        "error: {} with this environment has {} problem(s); `weir serve` or `weir executor` would not start:",
        path.display(),
        problems.len()
    );
    for problem in problems {
        eprintln!("  - {problem}");
    }
}

/// `weir config check|example`.
pub(crate) fn run(args: ConfigArgs, command: &Command) -> std::process::ExitCode {
    match args.command {
        ConfigCommand::Example => {
            print!("{}", example(command));
            std::process::ExitCode::SUCCESS
        }
        ConfigCommand::Check { path } => {
            // The environment variables a start would read are checked too, as a start
            // checks them: a file that is valid alone may still not start here.
            let mut problems = Vec::new();
            for section in SECTIONS {
                for problem in environment_problems(command, section) {
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                }
            }
            let checked = check(command, &path);
            if checked.is_ok() && problems.is_empty() {
                // Each value is right alone: now what a start of each command refuses.
                for section in SECTIONS {
                    problems.extend(start_problems(command, section, &path));
                }
            }
            match checked {
                Ok(checked) if problems.is_empty() => {
                    let overriding = overriding_variables(command);
                    println!(
                        "{}: valid ({} value(s) set{})",
                        path.display(),
                        checked.len(),
                        if overriding.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; the environment overrides the file with {}",
                                overriding.join(", ")
                            )
                        }
                    );
                    std::process::ExitCode::SUCCESS
                }
                Ok(_) => {
                    report_check(&path, &problems);
                    std::process::ExitCode::from(INVALID)
                }
                Err(more) => {
                    problems.extend(more);
                    report_check(&path, &problems);
                    std::process::ExitCode::from(INVALID)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_derived_one_way() {
        assert_eq!(env_name("instance_slots"), "WEIR_INSTANCE_SLOTS");
        assert_eq!(env_name("state"), "WEIR_STATE");
    }

    #[test]
    fn near_keys_are_suggested_far_ones_not() {
        let known = ["instance_slots", "listen", "state"];
        assert_eq!(
            nearest("instance-slot", known.iter().copied()),
            Some("instance_slots")
        );
        assert_eq!(nearest("lisen", known.iter().copied()), Some("listen"));
        assert_eq!(nearest("colour", known.iter().copied()), None);
    }

    #[test]
    fn wrap_keeps_lines_short() {
        let lines = wrap("a bb ccc dddd", 6);
        assert_eq!(lines, ["a bb", "ccc", "dddd"]);
    }
}
