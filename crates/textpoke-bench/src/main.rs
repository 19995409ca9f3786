mod sites;
fn main() {
    static_keys::global_init();
    for g in &sites::GROUPS {
        println!("{} tp={} sk_fns={}", g.size, (g.textpoke_key_sites)().unwrap(), g.static_keys_sites.len());
    }
    println!("sk entries {}", static_keys::jump_entries_count());
    println!("tp entries {}", textpoke::jump_sites().unwrap().len());
}
