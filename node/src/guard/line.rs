//! The guard's one line to a guarded Redis master: lifts and fences of one group travel on
//! one connection, in the order the guard decided them.
//!
//! Why one line: a lift is asked for while the lease is valid but may reach the server
//! later (a server that stalls with the lift in its socket); the guard's fence at the
//! deadline must then land *after* it, or the late lift would make an old master writable
//! again beside the new one. Commands on one connection are carried out in the order they
//! were written, and the line writes a lift's pipeline before it takes the next order, so a
//! fence decided while a lift is on its way is carried out right behind it, before any
//! other client's write can come between.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use vigil_probes::{RedisTarget, describe_redis_error};

use super::GuardedRedis;

/// How many times the guard tries to make a Redis master refuse writes.
const FENCE_ATTEMPTS: u32 = 20;
/// The pause between two of those tries.
const FENCE_RETRY: Duration = Duration::from_millis(250);

/// Where a lift's answer goes.
pub type Answer = Box<dyn FnOnce(Result<String, String>) + Send>;

/// An order for the line.
pub enum LineOrder {
    /// Lift the fence (the guard checked its deadline); the answer says how it went.
    Lift(Answer),
    /// Make the master refuse writes: the deadline passed.
    Fence,
}

/// The sending end of a line; the line's task ends once it is dropped and its work is done.
pub struct Line {
    /// The server the line talks to.
    pub server: GuardedRedis,
    orders: mpsc::UnboundedSender<LineOrder>,
}

impl Line {
    /// Starts the line of `group` to `server`; `busy` counts the orders not yet done.
    pub fn start(group: &str, server: GuardedRedis, busy: Arc<AtomicUsize>) -> Self {
        let (orders, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(group.to_string(), server.clone(), receiver, busy));
        Line { server, orders }
    }

    /// Hands the line an order; `busy` is counted up here and down when it is done.
    pub fn order(&self, order: LineOrder, busy: &AtomicUsize) {
        busy.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(order)) = self.orders.send(order) {
            busy.fetch_sub(1, Ordering::SeqCst);
            if let LineOrder::Lift(answer) = order {
                answer(Err("the guard's line to the server has stopped".into()));
            }
        }
    }
}

type Lifting = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

async fn run(
    group: String,
    server: GuardedRedis,
    mut orders: mpsc::UnboundedReceiver<LineOrder>,
    busy: Arc<AtomicUsize>,
) {
    let target = server.target();
    let address = target.address();
    let mut connection: Option<MultiplexedConnection> = None;
    // The lift on its way, its answer, and whether a fence was ordered behind it.
    let mut lifting: Option<(Lifting, Answer, bool)> = None;
    let mut fences = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // Biased, the lift first: a lift just started is polled, and so written to the
            // connection, before the line takes its next order.
            biased;
            lifted = async { lifting.as_mut().expect("guarded by the condition").0.as_mut().await }, if lifting.is_some() => {
                let (_, answer, fenced_behind) = lifting.take().expect("guarded by the condition");
                busy.fetch_sub(1, Ordering::SeqCst);
                if lifted.is_err() {
                    connection = None;
                }
                answer(lift_outcome(lifted, fenced_behind, &address, &server));
            }
            Some(_) = fences.join_next(), if !fences.is_empty() => {
                busy.fetch_sub(1, Ordering::SeqCst);
            }
            order = orders.recv() => match order {
                None => break,
                Some(LineOrder::Lift(answer)) => {
                    if lifting.is_some() {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        answer(Err("another lift is still on its way".into()));
                        continue;
                    }
                    let mut session = match connection.clone() {
                        Some(session) => session,
                        None => match target.connect(target.timeout).await {
                            Ok(session) => {
                                connection = Some(session.clone());
                                session
                            }
                            Err(error) => {
                                busy.fetch_sub(1, Ordering::SeqCst);
                                answer(Err(format!("connecting to {address}: {}", describe_redis_error(&error))));
                                continue;
                            }
                        },
                    };
                    let settings = vigil_actions::redis_write_settings(server.lifted_min_replicas, server.max_lag_s, true);
                    let timeout = target.timeout;
                    let what = address.clone();
                    let lift: Lifting = Box::pin(async move {
                        match tokio::time::timeout(timeout, settings.query_async::<()>(&mut session)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(format!("lifting the fence on {what}: {}", describe_redis_error(&error))),
                            Err(_) => Err(format!("lifting the fence on {what}: no answer within {timeout:?}")),
                        }
                    });
                    lifting = Some((lift, answer, false));
                }
                Some(LineOrder::Fence) => {
                    if let Some(lifting) = lifting.as_mut() {
                        lifting.2 = true;
                    }
                    warn!(group, %address, "lease ran out with nobody renewing: making the master refuse writes");
                    let first_try = connection.clone();
                    fences.spawn(fence(group.clone(), server.clone(), target.clone(), first_try));
                }
            },
        }
    }
    // Orders no longer come; what is on its way still finishes, and is answered.
    if let Some((lift, answer, fenced_behind)) = lifting.take() {
        answer(lift_outcome(lift.await, fenced_behind, &address, &server));
        busy.fetch_sub(1, Ordering::SeqCst);
    }
    while fences.join_next().await.is_some() {
        busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a lift's answer says: a lift the guard fenced right behind is no lift.
fn lift_outcome(
    lifted: Result<(), String>,
    fenced_behind: bool,
    address: &str,
    server: &GuardedRedis,
) -> Result<String, String> {
    match lifted {
        Ok(()) if fenced_behind => Err(format!(
            "{address} took the lift, but the lease ran out meanwhile and the guard fenced it again right behind"
        )),
        Ok(()) => Ok(format!(
            "fence lifted by the guard: min-replicas-to-write {}, writes unpaused",
            server.lifted_min_replicas
        )),
        Err(error) => Err(error),
    }
}

/// Makes the master refuse writes: first on the line's connection (behind any lift on its
/// way), then, should that fail, on fresh connections, retried for a while.
async fn fence(group: String, server: GuardedRedis, target: RedisTarget, first_try: Option<MultiplexedConnection>) {
    let address = target.address();
    let settings = vigil_actions::redis_write_settings(server.refuse_all, server.max_lag_s, false);
    // The line polled any lift on this connection before it took this fence, so the lift's
    // commands are already queued ahead of these.
    if let Some(mut connection) = first_try {
        match tokio::time::timeout(target.timeout, settings.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => {
                info!(group, %address, "the master refuses writes");
                return;
            }
            Ok(Err(error)) => {
                warn!(group, %address, error = %describe_redis_error(&error), "the fence guard could not fence the master yet")
            }
            Err(_) => warn!(group, %address, "the fence guard's first try got no answer in time"),
        }
    }
    for attempt in 1..=FENCE_ATTEMPTS {
        match vigil_actions::redis_set_min_replicas(&target, server.refuse_all, server.max_lag_s).await {
            Ok(()) => {
                info!(group, %address, "the master refuses writes");
                return;
            }
            Err(error) if attempt == FENCE_ATTEMPTS => {
                error!(group, %address, %error, "the fence guard could not fence the master; giving up");
            }
            Err(error) => {
                warn!(group, %address, %error, attempt, "the fence guard could not fence the master yet");
                tokio::time::sleep(FENCE_RETRY).await;
            }
        }
    }
}
