//! The test Slurm that `scripts/test.sh` starts (`testenv/slurm/slurm-up.sh`), read from its `slurm-env.sh`.

/// Where it is and how to reach it.
pub struct Slurm {
    pub url: String,
    pub user: String,
    pub token: String,
    pub key: Vec<u8>,
    pub dir: String,
    pub jobs_dir: String,
}

/// The cluster named by `HAIYUN_TEST_SLURM`, or `None` (the test is skipped) when there is none.
pub fn slurm() -> Option<Slurm> {
    let Some(path) = std::env::var_os("HAIYUN_TEST_SLURM") else {
        assert!(
            std::env::var_os("HAIYUN_REQUIRE_SLURM").is_none(),
            "HAIYUN_REQUIRE_SLURM is set but HAIYUN_TEST_SLURM is not: Slurm did not start"
        );
        eprintln!("skipped: HAIYUN_TEST_SLURM is not set (scripts/test.sh starts Slurm and sets it)");
        return None;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    Some(Slurm {
        url: var("SLURM_LB_REST_URL"),
        user: var("SLURM_LB_USER"),
        token: var("SLURM_LB_TOKEN"),
        key: std::fs::read(var("SLURM_LB_JWT_KEY")).unwrap(),
        dir: var("SLURM_LB_DIR"),
        jobs_dir: var("SLURM_LB_JOBS_DIR"),
    })
}
