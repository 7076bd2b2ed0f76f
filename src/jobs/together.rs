//! Work handed in one item at a time and done in batches: what arrives
//! while one batch is being done makes up the next. Under load one
//! statement or message then serves many callers; alone, an item waits
//! for nothing but its own work.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// A handle for handing items to the task that does them in batches; cheap
/// to clone. The task ends with the last handle.
pub struct Together<I, O> {
    queue: mpsc::UnboundedSender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Together<I, O> {
    fn clone(&self) -> Self {
        Together {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Together<I, O> {
    /// Starts the task on the current runtime. `work` gets up to `most`
    /// items and returns one output for each, in their order.
    pub fn start<F, Fut>(most: usize, mut work: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        let (queue, mut arrived) = mpsc::unbounded_channel::<(I, oneshot::Sender<O>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(most);
            while arrived.recv_many(&mut batch, most).await > 0 {
                let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
                for (reply, output) in replies.into_iter().zip(work(items).await) {
                    let _ = reply.send(output);
                }
            }
        });
        Together { queue }
    }

    /// Hands in `item` and waits for its output; None once the task ended.
    pub async fn call(&self, item: I) -> Option<O> {
        let (reply, output) = oneshot::channel();
        self.queue.send((item, reply)).ok()?;
        output.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Together;

    #[tokio::test]
    async fn each_caller_gets_the_output_for_its_own_item() {
        let doubled = Together::start(4, |items: Vec<u32>| async move {
            items.into_iter().map(|i| i * 2).collect()
        });
        let calls = (0..10).map(|i| {
            let doubled = doubled.clone();
            async move { (i, doubled.call(i).await) }
        });
        for (i, output) in futures::future::join_all(calls).await {
            assert_eq!(output, Some(i * 2));
        }
    }
}
