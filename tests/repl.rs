//! The REPL. Transcripts: each `tests/ui/repl/*.nnrepl` is a script of
//! inputs fed to a [`Session`] (an input runs on while it is
//! [`incomplete`]: brackets open and no syntax error before its end);
//! the snapshot shows each input after the prompt, then what it printed
//! (values and diagnostics). The last test drives the real binary through
//! a pseudo-terminal: line editing, continuation lines, completion,
//! Ctrl-C, history and Ctrl-D.

use nnc::driver::repl::{incomplete, Session};

fn transcript(script: &str) -> String {
    let mut s = Session::new();
    let mut out = String::new();
    let mut pending = String::new();
    for line in script.lines() {
        pending.push_str(line);
        pending.push('\n');
        if incomplete(&pending) {
            continue;
        }
        for (i, l) in pending.trim_end().lines().enumerate() {
            out.push_str(if i == 0 { "nnc> " } else { "...  " });
            out.push_str(l);
            out.push('\n');
        }
        let r = s.eval(&pending);
        out.push_str(&r.out);
        out.push_str(&r.err);
        pending.clear();
        if r.quit {
            out.push_str("(session ended)\n");
            break;
        }
    }
    out
}

#[test]
fn transcripts() {
    insta::glob!("ui/repl/*.nnrepl", |path: &std::path::Path| {
        let script = std::fs::read_to_string(path).expect("a script");
        let mut settings = insta::Settings::clone_current();
        settings.set_description(script.clone());
        settings.set_omit_expression(true);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_snapshot_path(path.parent().expect("a folder").join("snapshots"));
        settings.bind(|| insta::assert_snapshot!(transcript(&script)));
    });
}

#[test]
fn the_seed_neuron_through_a_pipe() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"))
        .arg("repl")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"let x = [0.5, 0.8, 0.2]\nsigmoid(sum(x * [0.2, -0.5, 1.0]) + 0.1)\n")
            .expect("writes");
    }
    let o = child.wait_with_output().expect("finishes");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "x: f32[3]\n0.5\n");
}

#[test]
fn an_error_keeps_the_earlier_definitions() {
    let mut s = Session::new();
    assert_eq!(s.eval("let w = [1.0, 2.0]").out, "w: f32[2]\n");
    let bad = s.eval("let v = w @ [1.0, 2.0, 3.0]");
    assert!(
        bad.err.contains("error[E0204]") && bad.err.contains("<repl:2>:1:11"),
        "{}",
        bad.err
    );
    let bad = s.eval("let w = w + [1.0, 2.0, 3.0]");
    assert!(bad.err.contains("cannot be broadcast"), "{}", bad.err);
    assert_eq!(s.eval("w * 2").out, "[2, 4] : f32[2]\n");
    assert!(s.eval("v").err.contains("cannot find `v`"));
}

/// A pseudo-terminal session with the real binary.
#[cfg(unix)]
#[test]
fn line_editing_continuation_completion_ctrl_c_and_history() {
    use expectrl::{ControlCode, Session as Pty};
    use std::time::Duration;

    let home = std::env::temp_dir().join(format!("nnc-repl-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("temp home");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nnc"));
    cmd.arg("repl")
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env("TERM", "xterm");
    let mut p = Pty::spawn(cmd).expect("spawns in a pseudo-terminal");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("nnc> ").expect("a prompt");
    p.send_line("let x = [0.5, 0.8, 0.2]").expect("sends");
    p.expect("x: f32[3]\r\n").expect("the definition is echoed");
    p.expect("nnc> ").expect("a prompt");
    // A definition over three lines, typed ahead of the prompts: the
    // editor continues while `{` is open, after a `...` prompt.
    p.send_line("fn sq(v: [..S]) -> [..S] {").expect("sends");
    p.send_line("  v * v").expect("sends");
    p.send_line("}").expect("sends");
    p.expect("...  ").expect("a continuation prompt");
    // "fn sq" and a line end: the reply, not the echo of the typed line.
    p.expect("fn sq\r\n").expect("the function is defined");
    p.expect("nnc> ").expect("a prompt");
    // A syntax error before an open bracket ends the input at once: the
    // next prompt is a fresh one.
    p.send_line("let q = 1 +* sum([1.0,").expect("sends");
    p.expect("unexpected `*`").expect("the error at once");
    p.expect("nnc> ")
        .expect("a fresh prompt, not a continuation");
    // Ctrl-C drops a half-typed input; the session goes on.
    p.send("sigmoid(x").expect("sends");
    p.send(ControlCode::EndOfText).expect("sends Ctrl-C");
    // A fresh prompt: the editor dropped the input. (Type-ahead before
    // the prompt is lost while the terminal changes mode, as in most
    // line editors, so wait for it.)
    p.expect("nnc> ").expect("a new prompt after Ctrl-C");
    p.send_line("sq(x)").expect("sends");
    p.expect("[0.25, 0.64")
        .expect("the session survived Ctrl-C");
    p.expect("nnc> ").expect("a prompt");
    // Tab completes a stdlib name.
    p.send("sigmo\t").expect("sends");
    p.send_line("(0.0)").expect("sends");
    p.expect("0.5").expect("completed to sigmoid");
    p.expect("nnc> ").expect("a prompt");
    // Ctrl-D leaves and the history is kept.
    p.send(ControlCode::EndOfTransmission)
        .expect("sends Ctrl-D");
    for _ in 0..100 {
        if !p.is_alive().unwrap_or(false) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!p.is_alive().unwrap_or(false), "Ctrl-D ends the session");
    let history =
        std::fs::read_to_string(home.join(".local/share/nnc/history")).expect("history is saved");
    assert!(
        history.contains("let x = [0.5, 0.8, 0.2]") && history.contains("sq(x)"),
        "{history}"
    );
    assert!(
        !history.contains("sigmoid(x\n"),
        "a cancelled input is not kept"
    );
    let _ = std::fs::remove_dir_all(&home);
}
