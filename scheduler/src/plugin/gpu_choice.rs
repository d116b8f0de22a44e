//! Which GPUs of a node a task takes, when the policy has no rule of its own ("best fit").

use crate::model::{GPU_MILLI, TaskSpec};

/// Bit mask of the `usable` GPUs with at least `milli` free.
pub fn fitting_gpus(free: &[u16], usable: u32, milli: u32) -> u32 {
    free.iter()
        .enumerate()
        .filter(|(j, f)| usable & (1u32 << j) != 0 && u32::from(**f) >= milli)
        .fold(0u32, |acc, (j, _)| acc | (1u32 << j))
}

/// GPU indices of `mask` in ascending order of free milli, stable on index; written into `out`.
pub fn sorted_by_free(free: &[u16], mask: u32, out: &mut [u8; 32]) -> usize {
    let mut n = 0;
    for (j, _) in free.iter().enumerate().filter(|(j, _)| mask & (1u32 << j) != 0) {
        out[n] = j as u8;
        n += 1;
    }
    out[..n].sort_by_key(|j| free[usize::from(*j)]);
    n
}

/// The default GPU choice: a shared task takes the usable GPU with the least free that still fits (lowest
/// index on ties); whole-GPU tasks take the lowest-index fully free GPUs; several shares take the first GPUs
/// that fit in ascending order of free. `None` when the node cannot hold the task.
pub fn best_fit_gpus(free: &[u16], usable: u32, task: &TaskSpec) -> Option<u32> {
    if task.is_cpu_only() {
        return Some(0);
    }
    let fit = fitting_gpus(free, usable, task.gpu_milli);
    if fit.count_ones() < task.gpus {
        return None;
    }
    if task.is_shared() {
        let mut best: Option<(u16, usize)> = None;
        for (j, f) in free.iter().enumerate() {
            if fit & (1u32 << j) != 0 && best.is_none_or(|(bf, _)| *f < bf) {
                best = Some((*f, j));
            }
        }
        return best.map(|(_, j)| 1u32 << j);
    }
    let order: Vec<usize> = if task.gpu_milli >= GPU_MILLI {
        (0..free.len()).filter(|j| fit & (1u32 << j) != 0).collect()
    } else {
        let mut buf = [0u8; 32];
        let n = sorted_by_free(free, fit, &mut buf);
        buf[..n].iter().map(|j| usize::from(*j)).collect()
    };
    Some(order.iter().take(task.gpus as usize).fold(0u32, |acc, j| acc | (1u32 << j)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSet;

    fn task(gpus: u32, milli: u32) -> TaskSpec {
        TaskSpec {
            cpu_milli: 1000,
            memory_mib: 1,
            gpus,
            gpu_milli: milli,
            models: ModelSet::ANY,
            nodes: Default::default(),
        }
    }

    #[test]
    fn a_shared_task_takes_the_tightest_gpu_that_fits() {
        let free = [1000, 300, 500, 300];
        assert_eq!(best_fit_gpus(&free, 0b1111, &task(1, 300)), Some(0b0010));
        assert_eq!(best_fit_gpus(&free, 0b1111, &task(1, 400)), Some(0b0100));
        assert_eq!(best_fit_gpus(&free, 0b1011, &task(1, 400)), Some(0b0001));
    }

    #[test]
    fn whole_gpu_tasks_take_the_lowest_fully_free_gpus() {
        let free = [200, 1000, 1000, 0, 1000];
        assert_eq!(best_fit_gpus(&free, 0b11111, &task(2, 1000)), Some(0b00110));
        assert_eq!(best_fit_gpus(&free, 0b11111, &task(4, 1000)), None);
    }

    #[test]
    fn several_shares_take_gpus_in_ascending_order_of_free() {
        let free = [1000, 600, 500, 900];
        assert_eq!(best_fit_gpus(&free, 0b1111, &task(2, 500)), Some(0b0110));
    }
}
