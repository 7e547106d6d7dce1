// `sqlx::migrate!` embeds migrations/conversation at compile time, and a stable compiler
// cannot tell cargo that a new file there needs a rebuild: this does.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/conversation");
}
