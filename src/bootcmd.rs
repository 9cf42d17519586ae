//! Boot commands in the VeeWee/Packer syntax, typed into the guest through QMP `send-key`.
//!
//! Text is typed as is; `<enter>`, `<esc>`, `<tab>`, `<bs>`, `<del>`, `<spacebar>`, arrows,
//! `<home>`, `<end>`, `<pageUp>`, `<pageDown>`, `<f1>`…`<f12>` press keys; `<leftCtrlOn>` …
//! `<leftCtrlOff>` (also Alt and Shift, left and right) hold modifiers; `<wait>` sleeps a
//! second, `<wait5>` five, `<wait1m30s>` any duration; `<waitFor "text">` waits until the text
//! appears on the serial console instead of guessing a sleep. `{{http_ip}}`, `{{http_port}}`,
//! `{{http_url}}` and `{{answer_url}}` are filled in first.

use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// One step of a boot command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Press (and release) keys together, as QMP qcodes.
    Keys(Vec<String>),
    /// Start holding a modifier.
    Hold(String),
    /// Stop holding a modifier.
    Release(String),
    /// Sleep.
    Wait(Duration),
    /// Wait for text on the serial console.
    WaitFor(String),
}

/// Parses a boot command (already rendered) into actions.
pub fn parse(command: &str) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    let mut rest = command;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some(end) = special_end(rest) {
                actions.push(special(&rest[1..end])?);
                rest = &rest[end + 1..];
                continue;
            }
        }
        actions.push(Action::Keys(char_keys(c)?));
        rest = &rest[c.len_utf8()..];
    }
    Ok(actions)
}

/// The index of the `>` closing a special key at the start of `s`, honouring quotes.
fn special_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            '<' if !quoted => return None,
            _ => {}
        }
    }
    None
}

fn special(name: &str) -> Result<Action> {
    if let Some(text) = name.strip_prefix("waitFor") {
        let text = text.trim();
        let text = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(|| anyhow!("<waitFor> needs quoted text, like <waitFor \"boot:\">"))?;
        return Ok(Action::WaitFor(text.to_string()));
    }
    if let Some(d) = name.strip_prefix("wait") {
        let duration = match d {
            "" => Duration::from_secs(1),
            d if d.chars().all(|c| c.is_ascii_digit()) => Duration::from_secs(d.parse()?),
            d => humantime::parse_duration(d).map_err(|e| anyhow!("<wait{d}>: {e}"))?,
        };
        return Ok(Action::Wait(duration));
    }
    for (side, qside) in [("left", ""), ("right", "_r")] {
        for (m, q) in [("Ctrl", "ctrl"), ("Alt", "alt"), ("Shift", "shift")] {
            let key = format!("{q}{qside}");
            if name == format!("{side}{m}On") {
                return Ok(Action::Hold(key));
            }
            if name == format!("{side}{m}Off") {
                return Ok(Action::Release(key));
            }
        }
    }
    let key = match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => "ret",
        "esc" => "esc",
        "tab" => "tab",
        "bs" => "backspace",
        "del" => "delete",
        "spacebar" => "spc",
        "insert" => "insert",
        "up" => "up",
        "down" => "down",
        "left" => "left",
        "right" => "right",
        "home" => "home",
        "end" => "end",
        "pageup" => "pgup",
        "pagedown" => "pgdn",
        f if f.starts_with('f') && f[1..].parse::<u8>().is_ok_and(|n| (1..=12).contains(&n)) => {
            return Ok(Action::Keys(vec![f.to_string()]))
        }
        _ => bail!("unknown special key <{name}> in the boot command"),
    };
    Ok(Action::Keys(vec![key.to_string()]))
}

/// The qcodes that type `c` on a US keyboard.
fn char_keys(c: char) -> Result<Vec<String>> {
    const SHIFTED: &[(char, &str)] = &[
        ('!', "1"),
        ('@', "2"),
        ('#', "3"),
        ('$', "4"),
        ('%', "5"),
        ('^', "6"),
        ('&', "7"),
        ('*', "8"),
        ('(', "9"),
        (')', "0"),
        ('_', "minus"),
        ('+', "equal"),
        ('{', "bracket_left"),
        ('}', "bracket_right"),
        ('|', "backslash"),
        (':', "semicolon"),
        ('"', "apostrophe"),
        ('~', "grave_accent"),
        ('<', "comma"),
        ('>', "dot"),
        ('?', "slash"),
    ];
    const PLAIN: &[(char, &str)] = &[
        (' ', "spc"),
        ('-', "minus"),
        ('=', "equal"),
        ('[', "bracket_left"),
        (']', "bracket_right"),
        ('\\', "backslash"),
        (';', "semicolon"),
        ('\'', "apostrophe"),
        ('`', "grave_accent"),
        (',', "comma"),
        ('.', "dot"),
        ('/', "slash"),
        ('\n', "ret"),
    ];
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        return Ok(vec![c.to_string()]);
    }
    if c.is_ascii_uppercase() {
        return Ok(vec!["shift".into(), c.to_ascii_lowercase().to_string()]);
    }
    if let Some((_, k)) = PLAIN.iter().find(|(p, _)| *p == c) {
        return Ok(vec![k.to_string()]);
    }
    if let Some((_, k)) = SHIFTED.iter().find(|(p, _)| *p == c) {
        return Ok(vec!["shift".into(), k.to_string()]);
    }
    bail!("the boot command has a character that cannot be typed: {c:?}")
}

/// Types `actions` into the VM, pausing `key_interval` between keys.
pub fn type_into(
    vm: &mut crate::qemu::Vm,
    actions: &[Action],
    key_interval: Duration,
) -> Result<()> {
    let mut qmp = vm.qmp()?;
    let mut held: Vec<String> = Vec::new();
    for action in actions {
        if crate::cancel::requested() {
            bail!("interrupted while typing the boot command");
        }
        match action {
            Action::Keys(keys) => {
                let mut all: Vec<&str> = held.iter().map(String::as_str).collect();
                all.extend(keys.iter().map(String::as_str));
                qmp.send_key(&all)?;
                std::thread::sleep(key_interval);
            }
            Action::Hold(k) => held.push(k.clone()),
            Action::Release(k) => held.retain(|h| h != k),
            Action::Wait(d) => std::thread::sleep(*d),
            Action::WaitFor(text) => vm.wait_for_text(text, Duration::from_secs(300))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Action {
        Action::Keys(k.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn parses_text_special_keys_and_waits() {
        let a = parse("<esc><wait5>aU:<enter>").unwrap();
        assert_eq!(
            a,
            vec![
                keys(&["esc"]),
                Action::Wait(Duration::from_secs(5)),
                keys(&["a"]),
                keys(&["shift", "u"]),
                keys(&["shift", "semicolon"]),
                keys(&["ret"]),
            ]
        );
    }

    #[test]
    fn wait_for_text_and_durations() {
        let a = parse("<waitFor \"boot: \"><wait1m30s><wait>").unwrap();
        assert_eq!(
            a,
            vec![
                Action::WaitFor("boot: ".into()),
                Action::Wait(Duration::from_secs(90)),
                Action::Wait(Duration::from_secs(1)),
            ]
        );
    }

    #[test]
    fn modifiers_and_a_lone_angle_bracket() {
        let a = parse("<leftCtrlOn>x<leftCtrlOff>a<b").unwrap();
        assert_eq!(a[0], Action::Hold("ctrl".into()));
        assert_eq!(a[2], Action::Release("ctrl".into()));
        assert_eq!(a[4], keys(&["shift", "comma"]));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(parse("<nosuchkey>")
            .unwrap_err()
            .to_string()
            .contains("<nosuchkey>"));
        assert!(parse("é").is_err());
    }
}
