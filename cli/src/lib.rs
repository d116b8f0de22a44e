//! The `haiyun` command line (submit, explain, quota, top, simulate, demo); its binary arrives with issue 8.
